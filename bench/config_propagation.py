"""etcd edit -> applied in every service: p95 latency of ConfigRuntime, against a bare etcd watch.

One ConfigRuntime per service (their real settings models and HOT_FIELDS) watches its own
`config/<service>` on a real etcd. Each round puts one hot edit per service and measures the time
from just before the put to the moment the runtime's apply step runs with the new settings
(decode, validate, diff, apply, status key, cache included). The baseline is the same puts seen by
a raw EtcdClient watch (no decode/validate/apply), in the same run.

    .venv/bin/python bench/config_propagation.py [--quick] [--rounds N] [--etcd URL]

Without --etcd a private etcd is started on free loopback ports (Debian's /usr/bin/etcd).
Last line: one JSON object (units in key names). Target (DESIGN.md section 10): p95 <= 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from libs.etcd_client import EtcdClient, WatchEvent  # noqa: E402
from libs.etcd_client.edit import SERVICE_MODELS, default_document, service_model  # noqa: E402
from libs.etcd_client.settings import EtcdSettings  # noqa: E402
from libs.watcher import ConfigRuntime  # noqa: E402

TARGET_P95_MS = 100.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(client: EtcdClient, rounds: int) -> list[float]:
    """put -> event delivered by a bare watch, in ms."""
    got = threading.Event()
    lat: list[float] = []

    def on_event(_ev: WatchEvent) -> None:
        got.set()

    w = client.watch("bench/raw", on_event)
    w.wait_created(5)
    try:
        for i in range(rounds):
            got.clear()
            t0 = time.perf_counter()
            client.set("bench/raw", {"i": i})
            if not got.wait(5):
                raise SystemExit("baseline watch event not delivered within 5 s")
            lat.append((time.perf_counter() - t0) * 1000)
    finally:
        w.stop()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 rounds (ends well within a minute)")
    ap.add_argument("--rounds", type=int, default=None, help="edits per service (default 300, quick 40)")
    ap.add_argument("--etcd", default=None, help="use this etcd instead of starting a private one")
    args = ap.parse_args()
    rounds = args.rounds or (40 if args.quick else 300)
    logging.basicConfig(level=logging.ERROR)

    tmp = Path(tempfile.mkdtemp(prefix="mld-bench-config-"))
    server = None
    if args.etcd is None:
        from fixtures.etcd import EtcdServer

        server = EtcdServer(tmp / "etcd")
        server.start()
        url = server.url
    else:
        url = args.etcd
    prefix = f"/mld-bench/{int(time.time())}"
    client = EtcdClient(url, prefix=prefix)
    runtimes: dict[str, ConfigRuntime[Any]] = {}
    applied: dict[str, tuple[threading.Event, list[Any]]] = {}
    try:
        base = baseline(client, rounds)
        for service in sorted(SERVICE_MODELS):
            model, hot = service_model(service)
            client.set(f"config/{service}", default_document(model))
            ev = threading.Event()
            box: list[Any] = [None]

            def step(_old: Any, new: Any, ev: threading.Event = ev, box: list[Any] = box) -> None:
                box[0] = (time.perf_counter(), new.log_level)
                ev.set()

            rt = ConfigRuntime(
                service,
                model,
                hot_fields=hot,
                on_apply=step,
                node="bench-node",
                manage_log_level=False,
                etcd=EtcdSettings(endpoint=url, prefix=prefix, events_endpoint=None, cache_dir=tmp / "cache"),
            )
            rt.start()
            runtimes[service] = rt
            applied[service] = (ev, box)
        lat: dict[str, list[float]] = {s: [] for s in runtimes}
        t_start = time.perf_counter()
        for i in range(rounds):
            level = "debug" if i % 2 == 0 else "info"
            for service, rt in runtimes.items():
                ev, box = applied[service]
                ev.clear()
                doc = default_document(rt.model)
                doc["log_level"] = level  # hot in every service
                t0 = time.perf_counter()
                client.set(f"config/{service}", doc)
                if not ev.wait(5) or box[0][1] != level:
                    raise SystemExit(f"{service}: edit {i} not applied within 5 s")
                lat[service].append((box[0][0] - t0) * 1000)
        elapsed = time.perf_counter() - t_start
    finally:
        for rt in runtimes.values():
            rt.stop()
        with contextlib.suppress(Exception):
            client.delete("", prefix=True)
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    all_lat = [v for vs in lat.values() for v in vs]
    p95 = pct(all_lat, 0.95)
    base_p95 = pct(base, 0.95)
    print(f"{'service':<12} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for service, vs in lat.items():
        print(f"{service:<12} {statistics.median(vs):8.2f} {pct(vs, 0.95):8.2f} {max(vs):8.2f}")
    print(f"{'raw watch':<12} {statistics.median(base):8.2f} {base_p95:8.2f} {max(base):8.2f}  (baseline)")
    print(
        f"put -> applied p95 {p95:.2f} ms = {p95 / base_p95:.2f}x a bare etcd watch; target <= {TARGET_P95_MS} ms"
    )
    result = {
        "rounds": rounds,
        "services": len(runtimes),
        "edits": len(all_lat),
        "p50_put_to_applied_ms": round(statistics.median(all_lat), 3),
        "p95_put_to_applied_ms": round(p95, 3),
        "max_put_to_applied_ms": round(max(all_lat), 3),
        "per_service_p95_ms": {s: round(pct(v, 0.95), 3) for s, v in lat.items()},
        "baseline_raw_watch_p95_ms": round(base_p95, 3),
        "ratio_vs_raw_watch": round(p95 / base_p95, 3),
        "edits_per_s": round(len(all_lat) / elapsed, 1),
        "target_p95_ms": TARGET_P95_MS,
        "meets_target": p95 <= TARGET_P95_MS,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
