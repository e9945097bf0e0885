"""A real Prometheus (Debian's /usr/bin/prometheus) scrapes real /metrics endpoints and a real etcd.

By default each service's endpoint is served by a small process that registers exactly the metrics
the service defines (services/<pkg>/metrics.py and the shared ones) on a free port, so this runs
without the rest of the pipeline. With MLD_LAB_TARGETS='{"sniffer": "127.0.0.1:9101", ...}' (and
MLD_LAB_ETCD_TARGET) it scrapes a running lab instead and then also requires every dashboard panel
to return data. `check_scrape` is the reusable part for the lab's end-to-end test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fixtures.etcd import ETCD_BIN, EtcdServer

from helpers import REPO, free_port, wait_for
from libs.lab.prometheus import (
    ETCD_METRICS,
    OPENER,
    PrometheusProcess,
    prometheus_binary,
    query,
    start_prometheus,
    target_health,
)

PACKAGES = ("sniffer", "ml_detector", "rag_logger", "rag", "firewall")
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ml-defender.json"
RATE_WINDOW = "30s"  # several 1 s scrapes, so rate() has points in a short test
# Panels that only have data under conditions a replay lab does not create by itself.
CONDITIONAL_PANELS = frozenset({"Sniffer / XDP flow map", "RAG / Query latency", "RAG / Requests"})

EXPORTER = r"""
import signal
import sys
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from libs.common.metrics import start_metrics_server
from libs.lab.prometheus import register_service_metrics
register_service_metrics(sys.argv[1])
# One child per labelled metric, so that its series exist (value 0) as they would after traffic.
for collector in set(REGISTRY._names_to_collectors.values()):
    if isinstance(collector, MetricWrapperBase) and collector._labelnames:
        collector.labels(*["probe"] * len(collector._labelnames))
start_metrics_server("127.0.0.1", int(sys.argv[2]))
print("ready", flush=True)
signal.pause()  # until the test terminates it
"""


def dashboard_queries() -> list[tuple[str, str]]:
    """(row / panel title, expr) for every panel query of the dashboard, Grafana variables filled in."""
    out = []
    row = ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_WINDOW).replace("$__interval", "5s")
            out.append((f"{row} / {panel['title']}", expr))
    return out


def wait_all_up(url: str, targets: Mapping[str, str], etcd_target: str | None) -> dict[str, str]:
    """Wait until Prometheus scraped every target (and etcd, and itself) as up, three times over."""
    expected = len(targets) + (1 if etcd_target else 0) + 1  # + Prometheus itself

    def all_up() -> dict[str, str]:
        health = target_health(url)
        down = {k: v for k, v in health.items() if v != "up"}
        assert len(health) == expected and not down, f"targets {health}"
        return health

    health: dict[str, str] = wait_for(all_up, timeout=40, interval=0.25, what="every scrape target up")
    for service in targets:
        svc = service.replace("-", "_")
        got = query(url, f'up{{job="ml-defender", service="{svc}"}}')
        assert [s["value"][1] for s in got] == ["1"], f"up for {svc}: {got}"
    # rate() needs two scrapes of a target inside its window
    thrice = f'count(count_over_time(up{{job=~"ml-defender|etcd"}}[{RATE_WINDOW}]) >= 3)'
    wait_for(
        lambda: [s for s in query(url, thrice) if int(s["value"][1]) == expected - 1],
        timeout=30,
        what="three scrapes of every target",
    )
    return health


def check_panels(
    url: str, require_data: bool, may_be_empty: frozenset[str] = CONDITIONAL_PANELS
) -> list[str]:
    """Run every panel's queries: all must be valid; with require_data each panel must return a series.

    Returns the panels without data (allowed ones included).
    """
    with_data: dict[str, bool] = {}
    errors = []
    for title, expr in dashboard_queries():
        try:
            result = query(url, expr)
        except Exception as exc:  # an invalid query is a failure, reported with the others
            errors.append(f"{title}: {exc}")
            continue
        with_data[title] = with_data.get(title, False) or bool(result)
    assert not errors, "queries Prometheus refused:\n" + "\n".join(errors)
    assert len(with_data) >= 30, f"only {len(with_data)} panels with queries"
    empty = sorted(t for t, ok in with_data.items() if not ok)
    if require_data:
        missing = [t for t in empty if t not in may_be_empty]
        assert not missing, "panels without data: " + ", ".join(missing)
    return empty


def check_scrape(
    var_dir: Path, targets: Mapping[str, str], etcd_target: str | None, require_data: bool
) -> dict[str, Any]:
    """Start Prometheus on these targets, wait until every one is up, then run every panel's query."""
    plan = start_prometheus(var_dir, targets, etcd_target=etcd_target, port=0, scrape_interval_s=1)
    assert plan is not None
    with PrometheusProcess(plan):
        health = wait_all_up(plan.url, targets, etcd_target)
        empty = check_panels(plan.url, require_data)
        return {"url": plan.url, "health": health, "empty_panels": empty}


@pytest.fixture
def metrics_endpoints() -> Iterator[dict[str, str]]:
    """One exporter process per service on a free port; all stopped afterwards."""
    procs: list[subprocess.Popen[str]] = []
    targets: dict[str, str] = {}
    try:
        for pkg in PACKAGES:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-c", EXPORTER, pkg, str(port)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            targets[pkg] = f"127.0.0.1:{port}"
        for proc, (pkg, addr) in zip(procs, targets.items(), strict=True):
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until ready or the process dies (EOF)
            assert line.strip() == "ready", f"exporter of {pkg} failed (exit {proc.wait(5)})"
            url = f"http://{addr}/metrics"
            wait_for(lambda u=url: OPENER.open(u, timeout=1).status == 200, what=url)
        yield targets
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    if not os.path.exists(ETCD_BIN):
        pytest.skip(f"etcd binary not found at {ETCD_BIN} (apt-get install etcd-server)")
    with tempfile.TemporaryDirectory(prefix="mld-prom-etcd-") as tmp:
        server = EtcdServer(Path(tmp) / "data")
        try:
            server.start()
            yield server
        finally:
            server.stop()


@pytest.fixture
def need_prometheus() -> None:
    if prometheus_binary() is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")


@pytest.mark.integration
def test_prometheus_scrapes_every_service_and_etcd_and_answers_every_panel(
    need_prometheus: None, metrics_endpoints: dict[str, str], etcd: EtcdServer, tmp_path: Path
) -> None:
    etcd_target = etcd.url.removeprefix("http://")
    seen = check_scrape(tmp_path, metrics_endpoints, etcd_target, require_data=True)
    assert sum(1 for k in seen["health"] if k.startswith("ml-defender/")) == len(PACKAGES)
    # The etcd metric names the dashboard and alerts use exist in this etcd.
    with OPENER.open(etcd.url + "/metrics", timeout=5) as resp:
        exposed = set(re.findall(r"^([a-zA-Z_:][\w:]*)", resp.read().decode(), re.M))
    assert exposed >= ETCD_METRICS, f"etcd does not expose {sorted(ETCD_METRICS - exposed)}"


@pytest.mark.e2e
@pytest.mark.skipif("MLD_LAB_TARGETS" not in os.environ, reason="set MLD_LAB_TARGETS to scrape a running lab")
def test_prometheus_scrapes_a_running_lab(need_prometheus: None, tmp_path: Path) -> None:
    targets = json.loads(os.environ["MLD_LAB_TARGETS"])
    check_scrape(tmp_path, targets, os.environ.get("MLD_LAB_ETCD_TARGET"), require_data=True)


def lab_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libs.lab.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=180
    )


def value(url: str, expr: str) -> float | None:
    got = query(url, expr)
    return float(got[0]["value"][1]) if got else None


@pytest.mark.e2e
def test_a_killed_service_shows_down_is_restarted_and_the_pipeline_reconnects(
    need_prometheus: None, shared_pcaps: Path, tmp_path: Path
) -> None:
    """The lab under supervisord with a real Prometheus: SIGKILL the detector (both of its peers must
    reconnect), see it in `up` and in `mld-lab status`, see supervisord restart it and flows resume."""
    from libs.lab import control
    from libs.lab.plan import SERVICES, LabSettings

    lab_dir = tmp_path / "lab"
    try:
        up = lab_cmd(
            "up", "--mode", "replay", "--ports", "auto", "--lab-dir", str(lab_dir),
            "--artifacts-dir", str(tmp_path / "artifacts"), "--pace", "fast", "--timeout", "90",
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        lab = LabSettings.model_validate_json((lab_dir / "lab.json").read_text())
        targets = {svc: f"127.0.0.1:{lab.ports.metrics(svc)}" for svc in SERVICES}
        etcd_target = f"127.0.0.1:{lab.ports.etcd_client}"
        plan = start_prometheus(
            tmp_path / "prom", targets, etcd_target=etcd_target, port=0, scrape_interval_s=1
        )
        assert plan is not None
        with PrometheusProcess(plan):
            wait_all_up(plan.url, targets, etcd_target)
            # one request to the RAG service, so that its query panels have something to show
            ask = subprocess.run(
                [str(lab.venv_bin / "mld-rag"), "stats", "--config", str(lab.config_dir / "rag.json")],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert ask.returncode == 0, ask.stdout + ask.stderr
            scraped = f"count_over_time(mld_rag_query_seconds_count[{RATE_WINDOW}]) >= 3"
            wait_for(lambda: query(plan.url, scraped), timeout=30, what="the RAG request scraped three times")
            wait_for(
                lambda: query(plan.url, "sum(mld_firewall_banned_addresses) > 0"),
                timeout=90,
                what="a first ban",
            )
            check_panels(plan.url, require_data=True, may_be_empty=frozenset({"Sniffer / XDP flow map"}))
            flows = "sum(mld_ml_detector_flows_scored_total)"
            wait_for(lambda: (value(plan.url, flows) or 0) > 0, timeout=60, what="flows scored")
            before = {s.name: s.pid for s in control.program_states(lab)}
            victim = "ml-detector"
            killed_at = time.monotonic()
            os.kill(before[victim], signal.SIGKILL)
            # supervisord restarts it with a new pid; status reports the real state
            wait_for(
                lambda: any(
                    s.name == victim and s.state == "RUNNING" and s.pid not in (0, before[victim])
                    for s in control.program_states(lab)
                ),
                timeout=60,
                what=f"{victim} restarted by supervisord",
            )
            status = lab_cmd("status", "--lab-dir", str(lab_dir))
            assert (
                f"pid {next(s.pid for s in control.program_states(lab) if s.name == victim)}" in status.stdout
            )
            # Prometheus saw the gap and sees the new process
            wait_for(
                lambda: value(plan.url, 'min_over_time(up{service="ml_detector"}[2m])') == 0,
                timeout=30,
                what="the detector's outage in up",
            )
            wait_for(
                lambda: value(plan.url, 'up{service="ml_detector"}') == 1,
                timeout=60,
                what="the detector up again",
            )
            # the others never went down, and the pipeline flows again through the new detector
            since = f"{int(time.monotonic() - killed_at) + 2}s"
            others = f'min(min_over_time(up{{job="ml-defender", service!="ml_detector"}}[{since}]))'
            assert value(plan.url, others) == 1, "another service went down with the detector"
            wait_for(
                lambda: (value(plan.url, flows) or 0) > 0, timeout=60, what="flows scored by the new detector"
            )
            for peer in ("firewall", "rag_logger"):
                received = f"sum(mld_{peer}_zmq_received_messages_total)"
                start = value(plan.url, received) or 0
                wait_for(
                    lambda r=received, s0=start: (value(plan.url, r) or 0) > s0,
                    timeout=60,
                    what=f"{peer} receiving from the restarted detector",
                )
    finally:
        # Only this lab's supervisord and programs: `mld-lab down` would also remove the live lab's
        # namespaces by name, which may belong to someone else's lab on this host.
        if (lab_dir / "lab.json").exists():
            control.shutdown(LabSettings.model_validate_json((lab_dir / "lab.json").read_text()))
