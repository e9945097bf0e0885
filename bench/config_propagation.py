"""etcd edit -> applied in every service, measured on the five real service processes.

A private etcd on free loopback ports; the defaults of deploy/config loaded into it (as the lab
does); then the pipeline as real processes, each with `--etcd` and its own free ports:
`mld-sniffer run` (replays a shared capture in a loop at its own pace, so flows keep moving)
-> `mld-detector run` -> `mld-firewall run` (dry_run backend) and `mld-rag-logger run`
(artifacts in a temp dir) -> `mld-rag run` (ingests them). ConfigChange events go to the bench's
rag-logger, as in the lab.

Each round makes one hot edit per service (an operator's whole document with one number
toggled: the sniffer's fast-detector score, the detector's drop threshold, the firewall's ban
timeout, the rag-logger's keep threshold, the rag service's ingest poll interval) and times
wall clock just before the put -> `applied_ns` in the service's status key
(`status/<node>/<service>/config`): the moment the service's apply steps had run and the new
settings object was swapped in. The status key is read by a watch in this process, so the
observer adds nothing to the figure; the time until the status key itself is seen is reported
too. Baseline in the same run, interleaved: a put to a scratch key -> its event at a bare watch.

`--in-process` keeps the earlier mode: five ConfigRuntimes in this process (no service apply
steps, no other load), useful to separate the library from the services.

    .venv/bin/python bench/config_propagation.py [--quick] [--rounds N] [--in-process]

Last line: one JSON object (units in key names). Target (DESIGN.md section 10): p95 <= 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from libs.etcd_client import EtcdClient, WatchEvent  # noqa: E402

TARGET_P95_MS = 100.0
NODE = "bench"
SHARED = Path(os.environ.get("MLD_SHARED_PCAPS", REPO.parent / "shared" / "data" / "pcaps"))
PCAP = "attack-nmap-syn-scan.pcap"  # 2,011 packets over 23 s: a port scan the detector drops
SERVICES = ("sniffer", "ml-detector", "firewall", "rag-logger", "rag")
PROGRAMS = {
    "sniffer": "mld-sniffer",
    "ml-detector": "mld-detector",
    "firewall": "mld-firewall",
    "rag-logger": "mld-rag-logger",
    "rag": "mld-rag",
}
MODULES = {s: f"services.{s.replace('-', '_')}" for s in SERVICES}


def _toggle(path: tuple[str, ...], a: float, b: float) -> Callable[[dict[str, Any], int], dict[str, Any]]:
    """An edit: the whole document with one number set to `a` on even rounds, `b` on odd ones."""

    def edit(doc: dict[str, Any], i: int) -> dict[str, Any]:
        out = copy.deepcopy(doc)
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = a if i % 2 == 0 else b
        return out

    return edit


EDITS = {  # hot fields with an effect on the running service (not log_level)
    "sniffer": _toggle(("fast_detector", "score"), 0.76, 0.75),
    "ml-detector": _toggle(("thresholds", "drop"), 0.71, 0.70),
    "firewall": _toggle(("timeout_s",), 3601.0, 3600.0),
    "rag-logger": _toggle(("keep", "final_min"), 0.71, 0.70),
    "rag": _toggle(("ingest", "poll_interval_ms"), 190, 200),
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_configs(tmp: Path) -> dict[str, dict[str, Any]]:
    """Each service's --config file: node id, free ports, temp paths (restart-required fields)."""
    ep = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("flows", "firewall", "rag_logger", "query")}
    metrics = {"host": "127.0.0.1"}
    return {
        "sniffer": {
            "node_id": NODE,
            "metrics": {**metrics, "port": free_port()},
            "capture": {
                "source": "pcap",
                "pcap_paths": [str(SHARED / PCAP)],
                "pace": "realtime",
                "speed": 2.0,
                "loop": True,
                "rebase_time": True,
            },
            # unanswered probes leave the table after 1 s, so flows reach the detector during the run
            "flows": {"export_interval_ms": 50, "half_open_timeout_s": 1.0},
            "output": {"endpoint": ep["flows"], "bind": True},
        },
        "ml-detector": {
            "node_id": NODE,
            "metrics": {**metrics, "port": free_port()},
            "input": {"endpoint": ep["flows"]},
            "firewall": {"endpoint": ep["firewall"]},
            "rag_logger": {"endpoint": ep["rag_logger"]},
        },
        "firewall": {
            "node_id": NODE,
            "backend": "dry_run",
            "dry_run_journal": str(tmp / "firewall.jsonl"),
            "metrics": {**metrics, "port": free_port()},
            "input": {"endpoint": ep["firewall"], "bind": True},
        },
        "rag-logger": {
            "node_id": NODE,
            "metrics": {**metrics, "port": free_port()},
            "input": {"endpoint": ep["rag_logger"], "bind": True},
            "artifacts_root": str(tmp / "artifacts"),
        },
        "rag": {
            "node_id": NODE,
            "metrics": {**metrics, "port": free_port()},
            "index": {"dir": str(tmp / "index")},
            "ingest": {"artifacts_root": str(tmp / "artifacts")},
            "query": {"endpoint": ep["query"]},
        },
    }


class StatusWatch:
    """Every status document of the node, as it arrives: (service, document revision) -> (doc, seen_ns)."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.seen: dict[tuple[str, int], tuple[dict[str, Any], int]] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.watch = client.watch(f"status/{NODE}/", self._on, prefix=True)
        self.watch.wait_created(5)

    def _on(self, ev: WatchEvent) -> None:
        seen_ns = time.time_ns()
        if ev.kind != "put":
            return
        service = ev.key.split("/")[2]
        doc = self.client.decode(ev)
        with self.cond:
            self.seen[(service, int(doc.get("document_revision", 0)))] = (doc, seen_ns)
            self.latest[service] = doc
            self.cond.notify_all()

    def wait(self, service: str, revision: int, timeout: float) -> tuple[dict[str, Any], int]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while (service, revision) not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"{service}: no status for revision {revision} within {timeout:.0f} s")
                self.cond.wait(left)
            return self.seen.pop((service, revision))

    def stop(self) -> None:
        self.watch.stop()


class RawWatch:
    """The baseline: a bare watch on a scratch key; put -> event delivered."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.got = threading.Event()
        self.seen_ns = 0
        self.watch = client.watch("bench/raw", self._on)
        self.watch.wait_created(5)

    def _on(self, _ev: WatchEvent) -> None:
        self.seen_ns = time.time_ns()
        self.got.set()

    def once(self, i: int) -> float:
        self.got.clear()
        t0 = time.time_ns()
        self.client.set("bench/raw", {"i": i})
        if not self.got.wait(5):
            raise SystemExit("baseline watch event not delivered within 5 s")
        return (self.seen_ns - t0) / 1e6

    def stop(self) -> None:
        self.watch.stop()


def program(service: str) -> list[str]:
    script = Path(sys.executable).parent / PROGRAMS[service]
    return [str(script)] if script.exists() else [sys.executable, "-m", MODULES[service]]


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def counter(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def start_services(
    url: str, tmp: Path, configs: dict[str, dict[str, Any]]
) -> dict[str, subprocess.Popen[bytes]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    events = configs["rag-logger"]["input"]["endpoint"]
    # consumers first, so the first flows and events are not waiting for a peer
    for service in ("rag-logger", "firewall", "rag", "ml-detector", "sniffer"):
        path = tmp / f"{service}.json"
        path.write_text(json.dumps(configs[service]))
        log = open(tmp / f"{service}.log", "wb")  # noqa: SIM115 - the child keeps it
        cmd = [*program(service), "run", "--config", str(path), "--etcd", url]
        cmd += ["--config-cache", str(tmp / "cache"), "--config-events", events]
        procs[service] = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
    return procs


def wait_up(
    procs: dict[str, subprocess.Popen[bytes]], configs: dict[str, dict[str, Any]], tmp: Path, timeout: float
) -> None:
    """Every service serves /metrics (its apply step is wired by then) and events flow to the firewall."""
    deadline = time.monotonic() + timeout
    pending = set(procs)
    while pending:
        for service in sorted(pending):
            if procs[service].poll() is not None:
                tail = (tmp / f"{service}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{service} exited with {procs[service].returncode}:\n{tail}")
            if scrape(configs[service]["metrics"]["port"]):
                pending.discard(service)
        if time.monotonic() > deadline:
            raise SystemExit(f"not up within {timeout:.0f} s: {', '.join(sorted(pending))} (logs in {tmp})")
        time.sleep(0.1)


def stop_services(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, int | None]:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes: dict[str, int | None] = {}
    for service, proc in procs.items():
        try:
            codes[service] = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            codes[service] = None
    return codes


def run_processes(url: str, tmp: Path, rounds: int, warmup: int) -> dict[str, Any]:
    client = EtcdClient(url)
    defaults = {s: json.loads((REPO / "deploy" / "config" / f"{s}.json").read_text()) for s in SERVICES}
    for service, doc in defaults.items():
        client.set(f"config/{service}", doc)
    configs = service_configs(tmp)
    procs = start_services(url, tmp, configs)
    status = raw = None
    applied: dict[str, list[float]] = {s: [] for s in SERVICES}
    status_seen: dict[str, list[float]] = {s: [] for s in SERVICES}
    base: list[float] = []
    try:
        wait_up(procs, configs, tmp, 120)
        status = StatusWatch(client)
        raw = RawWatch(client)
        t_start = time.perf_counter()
        for i in range(warmup + rounds):
            lat = raw.once(i)
            if i >= warmup:
                base.append(lat)
            for service in SERVICES:
                t0 = time.time_ns()
                rev = client.set(f"config/{service}", EDITS[service](defaults[service], i))
                doc, seen_ns = status.wait(service, rev, 10)
                if doc.get("result") != "APPLIED" or doc.get("revision") != rev:
                    raise SystemExit(f"{service}: edit at revision {rev} not applied: {doc}")
                if i >= warmup:
                    applied[service].append((int(doc["applied_ns"]) - t0) / 1e6)
                    status_seen[service].append((seen_ns - t0) / 1e6)
        elapsed = time.perf_counter() - t_start
        alive = {s: p.poll() is None for s, p in procs.items()}
        sniffer = scrape(configs["sniffer"]["metrics"]["port"])
        load = {
            "packets_captured_during_run": int(counter(sniffer, "mld_sniffer_packets_total")),
            "flows_exported_during_run": int(counter(sniffer, "mld_sniffer_flows_exported_total")),
        }
    finally:
        for w in (status, raw):
            if w is not None:
                w.stop()
        codes = stop_services(procs)
    if not all(alive.values()):
        raise SystemExit(f"a service died during the run: {alive}; logs in {tmp}")
    return {
        "applied": applied,
        "status_seen": status_seen,
        "base": base,
        "elapsed_s": elapsed,
        "extra": {**load, "exit_codes": codes},
    }


def run_in_process(url: str, tmp: Path, rounds: int, warmup: int) -> dict[str, Any]:
    """Five ConfigRuntimes in this process, each apply step just records the time."""
    from libs.etcd_client.edit import default_document, service_model
    from libs.etcd_client.settings import EtcdSettings
    from libs.watcher import ConfigRuntime

    client = EtcdClient(url)
    runtimes: dict[str, ConfigRuntime[Any]] = {}
    boxes: dict[str, tuple[threading.Event, list[Any]]] = {}
    applied: dict[str, list[float]] = {s: [] for s in SERVICES}
    base: list[float] = []
    raw = RawWatch(client)
    try:
        for service in SERVICES:
            model, hot = service_model(service)
            client.set(f"config/{service}", default_document(model))
            ev = threading.Event()
            box: list[Any] = [None]

            def step(_old: Any, new: Any, ev: threading.Event = ev, box: list[Any] = box) -> None:
                box[0] = (time.time_ns(), new)
                ev.set()

            rt = ConfigRuntime(
                service,
                model,
                hot_fields=hot,
                on_apply=step,
                node=NODE,
                manage_log_level=False,
                etcd=EtcdSettings(endpoint=url, events_endpoint=None, cache_dir=tmp / "cache"),
            )
            rt.start()
            runtimes[service] = rt
            boxes[service] = (ev, box)
        t_start = time.perf_counter()
        for i in range(warmup + rounds):
            lat = raw.once(i)
            if i >= warmup:
                base.append(lat)
            for service, rt in runtimes.items():
                ev, box = boxes[service]
                ev.clear()
                doc = EDITS[service](default_document(rt.model), i)
                t0 = time.time_ns()
                client.set(f"config/{service}", doc)
                if not ev.wait(5):
                    raise SystemExit(f"{service}: edit {i} not applied within 5 s")
                if i >= warmup:
                    applied[service].append((box[0][0] - t0) / 1e6)
        elapsed = time.perf_counter() - t_start
    finally:
        raw.stop()
        for rt in runtimes.values():
            rt.stop()
    return {"applied": applied, "status_seen": {}, "base": base, "elapsed_s": elapsed, "extra": {}}


def summary(name: str, values: list[float]) -> str:
    return f"{name:<26} {statistics.median(values):8.2f} {pct(values, 0.95):8.2f} {max(values):8.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 rounds (ends within a minute)")
    ap.add_argument("--rounds", type=int, default=None, help="edits per service (default 200, quick 30)")
    ap.add_argument("--in-process", action="store_true", help="ConfigRuntimes in this process instead")
    args = ap.parse_args()
    rounds = args.rounds or (30 if args.quick else 200)
    warmup = 2
    logging.basicConfig(level=logging.ERROR)
    if not (SHARED / PCAP).exists() and not args.in_process:
        raise SystemExit(f"capture {SHARED / PCAP} not found (set MLD_SHARED_PCAPS)")

    from fixtures.etcd import EtcdServer

    tmp = Path(tempfile.mkdtemp(prefix="mld-bench-config-"))
    server = EtcdServer(tmp / "etcd")
    ok = False
    try:
        server.start()
        run = run_in_process if args.in_process else run_processes
        res = run(server.url, tmp, rounds, warmup)
        ok = True
    finally:
        server.stop()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)

    applied: dict[str, list[float]] = res["applied"]
    base: list[float] = res["base"]
    all_lat = [v for vs in applied.values() for v in vs]
    p95, base_p95 = pct(all_lat, 0.95), pct(base, 0.95)
    mode = "in-process ConfigRuntimes" if args.in_process else "service processes"
    print(f"put -> applied ({mode}), {rounds} edits per service")
    print(f"{'':<26} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for service, vs in applied.items():
        print(summary(service, vs))
    print(summary("all services", all_lat))
    seen_all = [v for vs in res["status_seen"].values() for v in vs]
    if seen_all:
        print(summary("(status key seen)", seen_all))
    print(summary("bare etcd watch (baseline)", base))
    print(
        f"put -> applied p95 {p95:.2f} ms = {p95 / base_p95:.2f}x a bare etcd watch; target <= {TARGET_P95_MS} ms"
    )
    result: dict[str, Any] = {
        "mode": "in_process" if args.in_process else "processes",
        "rounds": rounds,
        "services": len(applied),
        "edits": len(all_lat),
        "p50_put_to_applied_ms": round(statistics.median(all_lat), 3),
        "p95_put_to_applied_ms": round(p95, 3),
        "max_put_to_applied_ms": round(max(all_lat), 3),
        "per_service_p95_ms": {s: round(pct(v, 0.95), 3) for s, v in applied.items()},
        "per_service_max_ms": {s: round(max(v), 3) for s, v in applied.items()},
        "baseline_raw_watch_p50_ms": round(statistics.median(base), 3),
        "baseline_raw_watch_p95_ms": round(base_p95, 3),
        "ratio_p95_vs_raw_watch": round(p95 / base_p95, 3),
        "edits_per_s": round(len(all_lat) / res["elapsed_s"], 1),
        "target_p95_ms": TARGET_P95_MS,
        "meets_target": p95 <= TARGET_P95_MS,
    }
    if seen_all:
        result["p95_put_to_status_seen_ms"] = round(pct(seen_all, 0.95), 3)
    result.update(res["extra"])
    with contextlib.suppress(Exception):
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
