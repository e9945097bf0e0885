"""Debian's Prometheus for the lab, scraping every service's /metrics on loopback.

The lab's configuration is deploy/prometheus/prometheus.yml with the lab's addresses put in, so
what the lab shows is what a real node's Prometheus shows, alert rules included. Preparing the
run (`start_prometheus`) is separate from running it: the lab hands the command to supervisord,
tests run it with `PrometheusProcess`. The query helpers read Prometheus's HTTP API.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from libs.common.errors import ConfigError, InputError

if TYPE_CHECKING:
    from libs.lab.plan import Program

REPO = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO / "deploy" / "prometheus"
DEFAULT_PORT = 9190
DEFAULT_ETCD_TARGET = "127.0.0.1:2379"
SERVICES_JOB = "ml-defender"
#: The lab's default /metrics addresses, by service name as metric names spell it.
LAB_TARGETS: Mapping[str, str] = {
    "sniffer": "127.0.0.1:9101",
    "ml_detector": "127.0.0.1:9102",
    "rag_logger": "127.0.0.1:9103",
    "rag": "127.0.0.1:9104",
    "firewall": "127.0.0.1:9105",
}

#: etcd's own metrics (3.4) that the dashboard and the alert rules use; an integration test checks
#: that a real etcd exposes each one.
ETCD_METRICS: frozenset[str] = frozenset(
    {
        "etcd_server_has_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_server_quota_backend_bytes",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "etcd_disk_backend_commit_duration_seconds_bucket",
        "etcd_server_proposals_failed_total",
    }
)


# Prometheus and the services listen on loopback: never go through an HTTP proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
METRIC_PACKAGES = ("sniffer", "ml_detector", "rag_logger", "rag", "firewall")


def register_service_metrics(pkg: str) -> None:
    """Register in this process every metric service `pkg` can expose: its services/<pkg>/metrics.py
    (factories named `*_metrics` without arguments are called, since some register lazily) and the
    shared ones (ZeroMQ transport, build info, live configuration) its code creates.

    Which shared metrics a service has is read from its source (calls of Pusher/Puller,
    build_info, ConfigRuntime), so a dashboard cannot rely on a metric a service never creates.
    """
    from libs.common.metrics import build_info, transport_metrics
    from libs.watcher.metrics import config_metrics

    root = REPO / "services" / pkg
    if (root / "metrics.py").exists():
        module = importlib.import_module(f"services.{pkg}.metrics")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__ or not name.endswith("metrics") or name.startswith("_"):
                continue
            params = inspect.signature(fn).parameters.values()
            if all(p.default is not inspect.Parameter.empty for p in params):
                fn()
    src = "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")))
    runtime = "ConfigRuntime(" in src
    if runtime or any(call in src for call in ("Pusher(", "Puller(", "transport_metrics(")):
        transport_metrics(pkg)
    if "build_info(" in src:
        build_info(pkg, "catalogue", "catalogue")
    if runtime or "config_metrics(" in src:
        config_metrics(pkg)


def sample_names(name: str, kind: str) -> set[str]:
    """The series names a metric family exposes (prometheus-client strips `_total` from counter families)."""
    return {
        "counter": {name + "_total", name + "_created"},
        "histogram": {name + "_bucket", name + "_sum", name + "_count", name + "_created"},
        "summary": {name, name + "_sum", name + "_count", name + "_created"},
        "info": {name + "_info"},
        "gaugehistogram": {name + "_bucket", name + "_gsum", name + "_gcount"},
    }.get(kind, {name})


def registered_sample_names(registry: CollectorRegistry = REGISTRY) -> set[str]:
    """Every series name the registry can expose, also for labelled metrics without children yet."""
    names: set[str] = set()
    for family in registry.collect():
        names |= sample_names(family.name, family.type)
    return names


def prometheus_binary() -> str | None:
    """Path of the prometheus server (Debian package `prometheus`), or None when not installed."""
    found = shutil.which("prometheus")
    if found:
        return found
    return "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None


def metric_service_name(service: str) -> str:
    """`ml-detector` → `ml_detector`: the `service` label is spelled the way metric names are."""
    return service.replace("-", "_")


def check_target(address: str, where: str) -> str:
    """Validate a `host:port` scrape address; an http:// URL or a bare host is a mistake."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"scrape target {address!r} is not host:port",
            where,
            "give the address of a /metrics endpoint as host:port, e.g. 127.0.0.1:9101",
        )
    return address


def render_config(
    targets: Mapping[str, str],
    *,
    rules: Path,
    etcd_target: str | None = DEFAULT_ETCD_TARGET,
    self_target: str | None = None,
    scrape_interval_s: float = 5.0,
    base: Path | None = None,
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with these targets and rule file; other jobs are kept as is."""
    base_path = base or DEPLOY_DIR / "prometheus.yml"
    try:
        doc = yaml.safe_load(base_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"cannot read the Prometheus configuration: {exc}",
            str(base_path),
            "restore deploy/prometheus/prometheus.yml from the repository",
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("scrape_configs", []), list):
        raise ConfigError(
            "not a Prometheus configuration (expected a mapping with scrape_configs)",
            str(base_path),
            "restore deploy/prometheus/prometheus.yml from the repository",
        )
    if not targets:
        raise ConfigError("no scrape target given", "targets", "pass at least one service: host:port")
    interval = f"{max(1, round(scrape_interval_s))}s"
    doc.setdefault("global", {})
    doc["global"]["scrape_interval"] = interval
    doc["global"]["evaluation_interval"] = interval
    # A scrape must end before the next one starts.
    doc["global"]["scrape_timeout"] = f"{max(1, round(scrape_interval_s) - 1)}s"
    doc["rule_files"] = [str(rules)]
    replaced: dict[str, list[dict[str, Any]] | None] = {
        SERVICES_JOB: [
            {
                "targets": [check_target(addr, f"targets[{name}]")],
                "labels": {"service": metric_service_name(name)},
            }
            for name, addr in targets.items()
        ],
        "etcd": (
            [{"targets": [check_target(etcd_target, "etcd_target")], "labels": {"service": "etcd"}}]
            if etcd_target
            else None
        ),
        "prometheus": (
            [{"targets": [check_target(self_target, "self_target")], "labels": {"service": "prometheus"}}]
            if self_target
            else None
        ),
    }
    jobs = []
    for job in doc.get("scrape_configs", []):
        name = job.get("job_name")
        if name in replaced:
            static = replaced[name]
            if static is None:
                continue  # that target is not part of this lab
            job = {**job, "static_configs": static}
        jobs.append(job)
    doc["scrape_configs"] = jobs
    return doc


@dataclass(frozen=True)
class LabPrometheus:
    """A prepared Prometheus run: the command, where it keeps its files and the URL it serves."""

    url: str
    port: int
    config_path: Path
    storage_dir: Path
    log_path: Path
    command: list[str]

    def program(self, name: str = "prometheus", priority: int = 50) -> Program:
        """The supervisord program of the lab (libs.lab.plan.Program) that runs this Prometheus."""
        from libs.lab.plan import Program  # plan may import this module; avoid the cycle

        return Program(name, list(self.command), priority=priority, stopwaitsecs=20)


def start_prometheus(
    var_dir: Path,
    targets: Mapping[str, str] = LAB_TARGETS,
    *,
    etcd_target: str | None = DEFAULT_ETCD_TARGET,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    scrape_interval_s: float = 5.0,
    retention: str = "2d",
    binary: str | None = None,
) -> LabPrometheus | None:
    """Render var_dir/prometheus.yml and return how to run Prometheus on host:port; None when not installed.

    Nothing is started here: the lab passes `.program()` to supervisord, tests use PrometheusProcess.
    Port 0 picks a free port now. `targets` maps a service name to its /metrics `host:port`.
    """
    exe = binary or prometheus_binary()
    if exe is None:
        return None
    if port == 0:
        port = _free_port(host)
    rules = DEPLOY_DIR / "alerts.yml"
    config = render_config(
        targets,
        rules=rules,
        etcd_target=etcd_target,
        self_target=f"{host}:{port}",
        scrape_interval_s=scrape_interval_s,
    )
    var_dir = Path(var_dir).resolve()
    storage = var_dir / "prometheus"
    try:
        storage.mkdir(parents=True, exist_ok=True)
        config_path = var_dir / "prometheus.yml"
        tmp = config_path.with_suffix(".yml.tmp")
        header = (
            "# generated by libs/lab/prometheus.py from deploy/prometheus/prometheus.yml; edits are lost\n"
        )
        tmp.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        tmp.replace(config_path)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the lab's Prometheus files: {exc.strerror}",
            str(var_dir),
            "check the lab directory",
        ) from None
    command = [
        exe,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={storage}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={host}:{port}",
        # POST /-/reload re-reads the configuration when the lab's targets change.
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    return LabPrometheus(
        url=f"http://{host}:{port}",
        port=port,
        config_path=config_path,
        storage_dir=storage,
        log_path=var_dir / "prometheus.log",
        command=command,
    )


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def api_get(url: str, path: str, params: Mapping[str, str] | None = None, timeout_s: float = 5.0) -> Any:
    """GET a Prometheus API path and return its `data`; an error answer raises InputError with Prometheus's reason."""
    full = url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with OPENER.open(full, timeout=timeout_s) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
        except ValueError:
            raise InputError(f"HTTP {exc.code}", full, "check that Prometheus runs at this URL") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"no answer from Prometheus: {exc}", full, "start it or check the URL") from None
    if body.get("status") != "success":
        raise InputError(
            f"{body.get('errorType', 'error')}: {body.get('error', 'unknown')}",
            full,
            "fix the query or the request",
        )
    return body.get("data")


def query(url: str, expr: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Instant query; returns the result vector (a scalar comes back as one sample without labels)."""
    data = api_get(url, "/api/v1/query", {"query": expr}, timeout_s)
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return list(data["result"])


def target_health(url: str) -> dict[str, str]:
    """`job/service/instance` → `up`, `down` or `unknown` for every active scrape target."""
    data = api_get(url, "/api/v1/targets", {"state": "active"})
    out = {}
    for t in data["activeTargets"]:
        labels = t["labels"]
        key = f"{labels.get('job')}/{labels.get('service', '')}/{labels.get('instance')}"
        out[key] = str(t["health"])
    return out


def is_ready(url: str, timeout_s: float = 1.0) -> bool:
    """True when Prometheus answers /-/ready (configuration loaded, storage open)."""
    try:
        with OPENER.open(url.rstrip("/") + "/-/ready", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class PrometheusProcess:
    """Runs a prepared Prometheus as a child process (tests, or a lab without supervisord)."""

    def __init__(self, plan: LabPrometheus) -> None:
        self.plan = plan
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 30.0) -> None:
        """Start and wait until /-/ready answers; on failure the process is stopped and its log quoted."""
        log = self.plan.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.plan.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if is_ready(self.plan.url):
                return
            time.sleep(0.1)
        code = self.proc.poll()
        self.stop()
        tail = self.plan.log_path.read_text(errors="replace")[-2000:]
        state = f"exited with {code}" if code is not None else f"not ready after {ready_timeout_s:.0f}s"
        raise InputError(f"prometheus {state}: {tail.strip()}", self.plan.url, f"see {self.plan.log_path}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (Prometheus flushes its head block), SIGKILL after the timeout."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> PrometheusProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(OSError):
            self.stop()
