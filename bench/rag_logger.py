"""rag-logger benchmark: events per second written durably, against baselines in the same run.

Durable = temp file, fdatasync, rename, directory fsync, acknowledged only after that. The same
LoggerCore as `mld-rag-logger run` (policy, encoding, queue, writer) is driven without a socket:
  group      the service's defaults: group commit, I/O threads
  per_event  baseline: one event per commit (fsync of its files and its directory each time), one I/O thread
  unsynced   reference: group commit without any fsync (what the filesystem does without durability)
`--hours H` adds a soak: a steady event rate for H hours with a fast injected clock (one day per
minute, old day directories deleted) and RSS sampled over time; growth is fitted after warm-up.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.rag_logger import layout
from services.rag_logger.config import RagLoggerSettings
from services.rag_logger.core import LoggerCore
from services.rag_logger.layout import Record
from services.rag_logger.synth import make_event

DAY_NS = 86_400 * 10**9


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def settings(root: Path, **commit: object) -> RagLoggerSettings:
    return RagLoggerSettings.model_validate(
        {
            "artifacts_root": root,
            "storage": {"min_free_bytes": 0},
            "queue_max_events": 1_000_000,
            "commit": commit,
        }
    )


def run_mode(name: str, root: Path, n: int, seed: int, **commit: object) -> dict[str, float]:
    """Submit n pre-built events as fast as possible; time until the last one is acknowledged."""
    rng = random.Random(seed)
    now = time.time_ns()
    events = [make_event(now + i, rng) for i in range(n)]
    latencies: list[float] = []

    def ack(records: list[Record]) -> None:
        t = time.monotonic()
        latencies.extend(t - r.accepted for r in records)

    core = LoggerCore(settings(root, **commit), on_commit=ack)
    core.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for ev in events:
        core.submit(ev)
    core.stop(timeout=600)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    assert len(latencies) == n, f"{name}: {len(latencies)} of {n} acknowledged"
    latencies.sort()
    res = {
        "events_per_s": n / dt,
        "latency_p50_ms": 1000 * latencies[n // 2],
        "latency_p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))],
        "cpu_us_per_event": 1e6 * cpu / n,
    }
    print(
        f"{name:10s} {n:6d} events {dt:6.2f} s {res['events_per_s']:8.0f} events/s "
        f"p50 {res['latency_p50_ms']:.1f} ms p99 {res['latency_p99_ms']:.1f} ms cpu {res['cpu_us_per_event']:.0f} us/event",
        flush=True,
    )
    return res


def soak(root: Path, hours: float, rate: float, sample_s: float) -> dict[str, object]:
    """Steady load for `hours`; RSS samples; old days deleted so the disk use stays bounded."""
    duration = hours * 3600
    start_wall = time.time_ns()
    t_start = time.monotonic()

    def clock() -> int:  # one simulated day per real minute: rotation happens often
        return start_wall + int((time.monotonic() - t_start) * DAY_NS / 60)

    written = [0]

    def ack(records: list[Record]) -> None:
        written[0] += len(records)

    core = LoggerCore(settings(root, max_batch_events=512), clock=clock, on_commit=ack)
    core.start()
    rng = random.Random(3)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def janitor() -> None:
        while not stop.wait(5):
            today = layout.day_of(clock())
            for d in root.iterdir():
                if d.is_dir() and layout.DAY_RE.match(d.name) and d.name < today:
                    shutil.rmtree(d, ignore_errors=True)

    jt = threading.Thread(target=janitor, daemon=True)
    jt.start()
    sent = 0
    next_sample = 0.0
    while (elapsed := time.monotonic() - t_start) < duration:
        due = int(elapsed * rate)
        while sent < due:
            core.submit(make_event(clock(), rng))
            sent += 1
        if elapsed >= next_sample:
            samples.append((elapsed, rss_kb()))
            print(
                f"soak t={elapsed:7.0f} s rss={samples[-1][1]} KiB written={written[0]} "
                f"queue={core.queue_depth()}",
                flush=True,
            )
            next_sample += sample_s
        time.sleep(0.005)
    core.stop(timeout=600)
    stop.set()
    jt.join(10)
    warm = [s for s in samples if s[0] >= duration * 0.2]
    slope = 0.0
    if len(warm) >= 3:
        xs = [s[0] / 3600 for s in warm]
        ys = [s[1] / 1024 for s in warm]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0
    return {
        "soak_hours": hours,
        "soak_rate_events_per_s": rate,
        "soak_events_sent": sent,
        "soak_events_written": written[0],
        "soak_rss_first_kb": warm[0][1] if warm else 0,
        "soak_rss_last_kb": samples[-1][1] if samples else 0,
        "soak_rss_max_kb": max((s[1] for s in samples), default=0),
        "soak_rss_growth_mb_per_h": round(slope, 3),
        "soak_rss_samples_kb": [s[1] for s in samples],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, ends within a minute")
    ap.add_argument("--events", type=int, default=20_000, help="events for the group and unsynced runs")
    ap.add_argument("--baseline-events", type=int, default=2_000, help="events for the per-event fsync run")
    ap.add_argument(
        "--root", type=Path, default=Path("var/bench/rag_logger"), help="where to write (removed after)"
    )
    ap.add_argument("--io-threads", type=int, default=8)
    ap.add_argument("--hours", type=float, default=0.0, help="soak duration (e.g. 0.05 = 3 min, 1 = 1 h)")
    ap.add_argument("--rate", type=float, default=300.0, help="soak event rate")
    ap.add_argument("--sample-s", type=float, default=10.0, help="soak RSS sampling interval")
    args = ap.parse_args()
    if args.quick:
        args.events, args.baseline_events = min(args.events, 2000), min(args.baseline_events, 300)
    args.root.mkdir(parents=True, exist_ok=True)
    base = args.root / f"run-{os.getpid()}"
    out: dict[str, object] = {"root": str(args.root.resolve()), "cpus": os.cpu_count()}
    try:
        per = run_mode(
            "per_event",
            base / "per_event",
            args.baseline_events,
            1,
            max_batch_events=1,
            max_delay_ms=0,
            io_threads=1,
        )
        grp = run_mode("group", base / "group", args.events, 2, io_threads=args.io_threads)
        uns = run_mode("unsynced", base / "unsynced", args.events, 3, fsync=False, io_threads=args.io_threads)
        out.update(
            {
                "events_per_s": round(grp["events_per_s"]),
                "latency_p50_ms": round(grp["latency_p50_ms"], 2),
                "latency_p99_ms": round(grp["latency_p99_ms"], 2),
                "cpu_us_per_event": round(grp["cpu_us_per_event"], 1),
                "cpu_bound_events_per_s": round(1e6 / grp["cpu_us_per_event"]),
                "baseline_per_event_fsync_events_per_s": round(per["events_per_s"]),
                "ratio_vs_per_event_fsync": round(grp["events_per_s"] / per["events_per_s"], 2),
                "unsynced_events_per_s": round(uns["events_per_s"]),
                "ratio_vs_unsynced": round(grp["events_per_s"] / uns["events_per_s"], 2),
                "target_events_per_s": 5000,
            }
        )
        print(
            f"group commit vs one fsync per event: x{out['ratio_vs_per_event_fsync']}; "
            f"vs no fsync at all: x{out['ratio_vs_unsynced']}",
            flush=True,
        )
        if args.hours > 0:
            out.update(soak(base / "soak", args.hours, args.rate, args.sample_s))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
