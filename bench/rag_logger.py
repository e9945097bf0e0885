"""rag-logger benchmark: events per second written durably, against baselines in the same run.

Durable = the data of both files and their directory entries on disk before an event is
acknowledged (power-loss safe): files written unnamed, their data synced (one syncfs per group by
default), then named, then one fsync per directory. The same LoggerCore as `mld-rag-logger run`
(policy, encoding, queue, writer) is driven without a socket. Modes, on each filesystem measured:
  group            the service's defaults: group commit by the writer processes, commit.sync_method syncfs
  group_in_thread  the same with `writer_processes: 0` (the writer a thread of the service, one core)
  group_fdatasync  group commit with commit.sync_method fdatasync (per-file fdatasync, I/O threads)
  per_event        baseline: one event per commit (sync of its files and directory each time)
  unsynced         reference: group commit without any sync (what the filesystem does without durability)
  create_new_file_us  the filesystem's own cost of creating one new empty file (O_CREAT|O_EXCL, close)
`--schemes` also times the bare file operations of each way to commit a group (named or unnamed
files; per-file fdatasync in 8 threads, one syncfs, or no sync), without encoding or queue.
Filesystems: the repo disk (--root) and, with --fresh-ext4 (root needed), a new ext4 made on a loop
file on the same disk (mounted under --root's parent, removed afterwards whatever happens).
`--hours H` adds a soak: a steady event rate for H hours with a fast injected clock (one day per
minute, old day directories deleted), optional writer stalls that build backlogs, and RSS sampled
over time; the growth after warm-up (samples not taken mid-backlog) is fitted and compared with the
1 MB/h limit (`soak_pass`).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.rag_logger import fsio, layout
from services.rag_logger.config import RagLoggerSettings
from services.rag_logger.core import LoggerCore
from services.rag_logger.layout import Record
from services.rag_logger.synth import make_event

DAY_NS = 86_400 * 10**9
TARGET_EVENTS_PER_S = 5000
SOAK_MAX_GROWTH_MB_PER_H = 1.0
SETTLED_QUEUE = 100  # soak samples taken with fewer events queued are fitted


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_in_use_kb() -> int:
    """Bytes glibc malloc has handed out and not got back (0 without glibc): live C-heap data."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return 0
    fn.restype = _MallInfo2
    info = fn()
    return int(info.uordblks + info.hblkhd) // 1024


def settings(root: Path, writer_processes: int | None = None, **commit: object) -> RagLoggerSettings:
    doc: dict[str, object] = {
        "artifacts_root": root,
        "storage": {"min_free_bytes": 0},
        "queue_max_events": 1_000_000,
        "commit": commit,
    }
    if writer_processes is not None:
        doc["writer_processes"] = writer_processes
    return RagLoggerSettings.model_validate(doc)


def cpu_s() -> float:
    """CPU of this process and of its reaped children (the writer processes, once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def proc_cpu_s(pid: int) -> float:
    """CPU a running process has used so far (/proc/<pid>/stat utime + stime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(
    name: str, root: Path, n: int, seed: int, writer_processes: int | None = None, **commit: object
) -> dict[str, float]:
    """Submit n pre-built events as fast as possible; time until the last one is acknowledged.

    The writers are started (and their processes up) before the clock starts, as in a running service.
    """
    rng = random.Random(seed)
    now = time.time_ns()
    events = [make_event(now + i, rng) for i in range(n)]
    latencies: list[float] = []

    def ack(records: list[Record]) -> None:
        t = time.monotonic()
        latencies.extend(t - r.accepted for r in records)

    core = LoggerCore(settings(root, writer_processes, **commit), on_commit=ack)
    core.start()
    deadline = time.monotonic() + 60
    while not all(st.ready for st in core.stores) and time.monotonic() < deadline:
        time.sleep(0.01)
    # the writer processes' start-up (imports) is not part of the events' cost
    startup = sum(proc_cpu_s(pid) for st in core.stores if (pid := getattr(st, "pid", None)))
    cpu0 = cpu_s() + startup
    t0 = time.perf_counter()
    for ev in events:
        core.submit(ev)
    core.stop(timeout=600)
    dt = time.perf_counter() - t0
    cpu = cpu_s() - cpu0
    shutil.rmtree(root, ignore_errors=True)  # a fresh ext4 has inodes for a few runs, not all
    assert len(latencies) == n, f"{name}: {len(latencies)} of {n} acknowledged"
    latencies.sort()
    res = {
        "events_per_s": n / dt,
        "latency_p50_ms": 1000 * latencies[n // 2],
        "latency_p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))],
        "cpu_us_per_event": 1e6 * cpu / n,
    }
    print(
        f"  {name:16s} {n:6d} events {dt:6.2f} s {res['events_per_s']:8.0f} events/s "
        f"p50 {res['latency_p50_ms']:.1f} ms p99 {res['latency_p99_ms']:.1f} ms "
        f"cpu {res['cpu_us_per_event']:.0f} us/event",
        flush=True,
    )
    return res


def create_new_file_us(directory: Path, n: int) -> tuple[float, float]:
    """Median wall time and mean CPU time (mostly kernel) of creating one new empty file, in us."""
    directory.mkdir(parents=True)
    times: list[float] = []
    cpu0 = time.process_time()
    for i in range(n):
        path = str(directory / f"f{i}")
        t0 = time.perf_counter()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    shutil.rmtree(directory)
    return 1e6 * statistics.median(times), 1e6 * cpu / n


def fs_suite(label: str, base: Path, args: argparse.Namespace) -> dict[str, object]:
    """All modes on one filesystem; keys prefixed with `label` (empty for the repo disk)."""
    print(f"{label or 'repo_disk'}: {base}", flush=True)
    create_us, create_cpu_us = create_new_file_us(base / "create", 500)
    print(f"  create_new_file  {create_us:.0f} us median, {create_cpu_us:.0f} us CPU per file", flush=True)
    per = run_mode(
        "per_event", base / "per_event", args.baseline_events, 1, max_batch_events=1, max_delay_ms=0
    )
    grp = run_mode("group", base / "group", args.events, 2)
    thr = run_mode("group_in_thread", base / "group_in_thread", args.events, 5, writer_processes=0)
    fds = run_mode(
        "group_fdatasync",
        base / "group_fdatasync",
        args.events,
        4,
        sync_method="fdatasync",
        io_threads=args.io_threads,
    )
    uns = run_mode("unsynced", base / "unsynced", args.events, 3, fsync=False)
    out: dict[str, object] = {
        "events_per_s": round(grp["events_per_s"]),
        "latency_p50_ms": round(grp["latency_p50_ms"], 2),
        "latency_p99_ms": round(grp["latency_p99_ms"], 2),
        "cpu_us_per_event": round(grp["cpu_us_per_event"], 1),
        "cpu_bound_events_per_s": round((os.cpu_count() or 1) * 1e6 / grp["cpu_us_per_event"]),
        "in_thread_writer_events_per_s": round(thr["events_per_s"]),
        "ratio_vs_in_thread_writer": round(grp["events_per_s"] / thr["events_per_s"], 2),
        "baseline_per_event_fsync_events_per_s": round(per["events_per_s"]),
        "ratio_vs_per_event_fsync": round(grp["events_per_s"] / per["events_per_s"], 2),
        "fdatasync_group_events_per_s": round(fds["events_per_s"]),
        "ratio_vs_fdatasync_group": round(grp["events_per_s"] / fds["events_per_s"], 2),
        "unsynced_events_per_s": round(uns["events_per_s"]),
        "unsynced_cpu_us_per_event": round(uns["cpu_us_per_event"], 1),
        "ratio_vs_unsynced": round(grp["events_per_s"] / uns["events_per_s"], 2),
        "create_new_file_us": round(create_us, 1),
        "create_new_file_cpu_us": round(create_cpu_us, 1),
        "meets_target": grp["events_per_s"] >= TARGET_EVENTS_PER_S,
    }
    print(
        f"  group commit vs one sync per event: x{out['ratio_vs_per_event_fsync']}; vs the writer as a "
        f"thread of the service: x{out['ratio_vs_in_thread_writer']}; vs per-file "
        f"fdatasync: x{out['ratio_vs_fdatasync_group']}; vs no sync at all: x{out['ratio_vs_unsynced']}",
        flush=True,
    )
    return {f"{label}{k}": v for k, v in out.items()}


SCHEMES = ("named_fdatasync", "named_syncfs", "unnamed_fdatasync", "unnamed_syncfs", "unnamed_nosync")


def scheme_run(scheme: str, directory: Path, events: int, batch: int, threads: int) -> dict[str, float]:
    """The file operations of one group-commit scheme alone (no encoding, no queue), in events/s.

    named:   create `.x.tmp`, write, [fdatasync each, in threads | syncfs], rename, fsync directory
    unnamed: O_TMPFILE, write, [fdatasync each, in threads | syncfs | nothing], linkat, fsync directory
    """
    from concurrent.futures import ThreadPoolExecutor

    directory.mkdir(parents=True)
    d = str(directory)
    pb, js = os.urandom(700), b"x" * 2700  # the sizes of a pair
    named, method = scheme.split("_")[0] == "named", scheme.split("_")[1]
    pool = ThreadPoolExecutor(threads)

    def stage(jobs: list[tuple[str, bytes]]) -> list[tuple[int, str, str]]:
        out = []
        for final, data in jobs:
            tmp = os.path.join(d, "." + os.path.basename(final) + ".tmp") if named else ""
            fd = fsio.write_new(tmp, data) if named else fsio.write_anon(d, data)
            if method == "fdatasync":
                os.fdatasync(fd)
            out.append((fd, tmp, final))
        return out

    cpu0, t0, i = time.process_time(), time.perf_counter(), 0
    while i < events:
        jobs = [
            (os.path.join(d, f"e{k}.{x}"), data)
            for k in range(i, i + batch)
            for x, data in (("pb", pb), ("json", js))
        ]
        dfd = fsio.open_dir(d)
        if method == "fdatasync":
            step = -(-len(jobs) // threads)
            staged = [
                s
                for part in pool.map(stage, [jobs[j : j + step] for j in range(0, len(jobs), step)])
                for s in part
            ]
        else:
            staged = stage(jobs)
            if method == "syncfs":
                fsio.syncfs(dfd)
        for fd, tmp, final in staged:
            if named:
                os.rename(tmp, final)
            else:
                fsio.link_fd(fd, final)
            os.close(fd)
        if method != "nosync":
            os.fsync(dfd)
        os.close(dfd)
        i += batch
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    pool.shutdown()
    shutil.rmtree(directory)
    print(
        f"  scheme {scheme:18s} {events / dt:8.0f} events/s  cpu {1e6 * cpu / events:5.0f} us/event",
        flush=True,
    )
    return {"events_per_s": events / dt, "cpu_us_per_event": 1e6 * cpu / events}


def schemes_suite(label: str, base: Path, events: int) -> dict[str, object]:
    print(f"{label or 'repo_disk'} schemes (file operations only, batch 512): {base}", flush=True)
    out: dict[str, object] = {}
    for scheme in SCHEMES:
        res = scheme_run(scheme, base / f"scheme-{scheme}", events, 512, 8)
        out[f"{label}scheme_{scheme}_events_per_s"] = round(res["events_per_s"])
        out[f"{label}scheme_{scheme}_cpu_us_per_event"] = round(res["cpu_us_per_event"], 1)
    return out


@contextlib.contextmanager
def fresh_ext4(near: Path, size_gb: float) -> Iterator[Path]:
    """A new ext4 on a sparse loop file in `near` (same disk); unmounted and deleted afterwards."""
    if os.geteuid() != 0:
        raise SystemExit("--fresh-ext4 needs root (mkfs.ext4, mount); run with sudo or drop the option")
    tag = f"ext4-{os.getpid()}"
    img, mnt = near / f"{tag}.img", near / tag
    mounted = False
    try:
        with open(img, "wb") as f:
            f.truncate(int(size_gb * 2**30))
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
        mnt.mkdir()
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)  # autoclear loop device
        mounted = True
        yield mnt
    finally:
        if mounted and subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()
        with contextlib.suppress(OSError):
            img.unlink()


def fit_slope_mb_per_h(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS (KiB samples at seconds) in MB per hour."""
    if len(samples) < 3:
        return 0.0
    xs = [s[0] / 3600 for s in samples]
    ys = [s[1] / 1024 for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def soak(
    root: Path, hours: float, rate: float, sample_s: float, stall_every_s: float, stall_s: float
) -> dict[str, object]:
    """Steady load for `hours`; RSS samples; old days deleted so the disk use stays bounded.

    With `stall_every_s` the writer is held for `stall_s` that often (as a disk stall would), so
    backlogs form and drain: the case where RSS used to step up.
    """
    duration = hours * 3600
    start_wall = time.time_ns()
    t_start = time.monotonic()

    def clock() -> int:  # one simulated day per real minute: rotation happens often
        return start_wall + int((time.monotonic() - t_start) * DAY_NS / 60)

    written = [0]

    def ack(records: list[Record]) -> None:
        written[0] += len(records)

    core = LoggerCore(settings(root), clock=clock, on_commit=ack)
    stalled = threading.Event()

    def stalling(real_commit: Callable[..., object]) -> Callable[..., object]:
        def commit(batch: list[Record]) -> object:
            while stalled.is_set():
                time.sleep(0.01)
            return real_commit(batch)

        return commit

    for st in core.stores:
        st.commit = stalling(st.commit)  # type: ignore[method-assign,assignment]
    core.start()

    def children_rss_kb() -> int:
        """The writer processes' RSS: the service's memory is all of it."""
        total = 0
        for st in core.stores:
            pid = getattr(st, "pid", None)
            if pid:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                    total += next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), 0)
        return total

    rng = random.Random(3)
    samples: list[tuple[float, int]] = []  # RSS of the service and its writer processes
    own: list[int] = []
    queues: list[int] = []
    heap: list[int] = []
    anon: list[int] = []
    stop = threading.Event()

    def janitor() -> None:
        # `rm` in a child process: an in-process rmtree of a day's ~36,000 files allocated several MB
        # in this process every minute, which the RSS samples then counted as the writer's
        while not stop.wait(5):
            today = layout.day_of(clock())
            old = [str(d) for d in root.iterdir() if layout.DAY_RE.match(d.name) and d.name < today]
            if old:
                subprocess.run(["rm", "-rf", "--", *old], check=False)

    jt = threading.Thread(target=janitor, daemon=True)
    jt.start()
    sent = 0
    next_sample = 0.0
    next_stall = stall_every_s if stall_every_s > 0 else float("inf")
    stall_end = 0.0
    max_queue = stalls = 0
    while (elapsed := time.monotonic() - t_start) < duration:
        due = int(elapsed * rate)
        while sent < due:
            core.submit(make_event(clock(), rng))
            sent += 1
        max_queue = max(max_queue, core.queue_depth())
        if elapsed >= next_stall:
            stalled.set()
            stalls += 1
            stall_end = elapsed + stall_s
            next_stall += stall_every_s
        if stalled.is_set() and elapsed >= stall_end:
            stalled.clear()
        if elapsed >= next_sample:
            own.append(rss_kb())
            samples.append((elapsed, own[-1] + children_rss_kb()))
            queues.append(core.queue_depth())
            heap.append(heap_in_use_kb())
            anon.append(rss_kb("RssAnon"))
            print(
                f"soak t={elapsed:7.0f} s rss={samples[-1][1]} KiB (service {own[-1]}) anon={anon[-1]} KiB "
                f"heap_in_use={heap[-1]} KiB written={written[0]} "
                f"queue={core.queue_depth()} gc={gc.get_count()} trims={core.memory_trims}",
                flush=True,
            )
            next_sample += sample_s
        time.sleep(0.005)
    stalled.clear()
    core.stop(timeout=600)
    stop.set()
    jt.join(10)
    warm_up_s = max(duration * 0.2, min(300.0, duration * 0.5))
    warm = [s for s in samples if s[0] >= warm_up_s]
    # settled = not in the middle of a backlog, whose records are rightly in memory
    settled = [s for s, q in zip(samples, queues, strict=True) if s[0] >= warm_up_s and q < SETTLED_QUEUE]
    slope = fit_slope_mb_per_h(settled)
    return {
        "soak_hours": hours,
        "soak_rate_events_per_s": rate,
        "soak_events_sent": sent,
        "soak_events_written": written[0],
        "soak_stalls": stalls,
        "soak_stall_s": stall_s if stalls else 0,
        "soak_max_queue_events": max_queue,
        "soak_memory_trims": core.memory_trims,
        "soak_warm_up_s": round(warm_up_s),
        "soak_settled_samples": len(settled),
        "soak_rss_first_kb": warm[0][1] if warm else 0,
        "soak_rss_last_kb": samples[-1][1] if samples else 0,
        "soak_rss_max_kb": max((s[1] for s in samples), default=0),
        "soak_service_rss_last_kb": own[-1] if own else 0,
        "soak_writer_processes": core.settings.writer_processes,
        "soak_rss_growth_mb_per_h": round(slope, 3),
        "soak_rss_growth_all_samples_mb_per_h": round(fit_slope_mb_per_h(warm), 3),
        "soak_max_growth_mb_per_h": SOAK_MAX_GROWTH_MB_PER_H,
        "soak_pass": len(settled) >= 3 and slope < SOAK_MAX_GROWTH_MB_PER_H and written[0] == sent,
        "soak_sample_s": sample_s,
        "soak_rss_samples_kb": [s[1] for s in samples],
        "soak_queue_samples": queues,
        "soak_rss_anon_samples_kb": anon,
        "soak_heap_in_use_samples_kb": heap,
    }


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: unmount, remove temp files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, ends within a minute")
    ap.add_argument("--events", type=int, default=20_000, help="events for the group and unsynced runs")
    ap.add_argument("--baseline-events", type=int, default=2_000, help="events for the per-event run")
    ap.add_argument(
        "--root", type=Path, default=Path("var/bench/rag_logger"), help="where to write (removed after)"
    )
    ap.add_argument(
        "--fresh-ext4",
        action="store_true",
        help="also measure on a new ext4 made on a loop file under --root (same disk; needs root)",
    )
    ap.add_argument("--fresh-ext4-gb", type=float, default=2.0, help="size of that (sparse) loop file")
    ap.add_argument("--skip-repo-disk", action="store_true", help="only the fresh ext4 (with --fresh-ext4)")
    ap.add_argument("--io-threads", type=int, default=8, help="for the group_fdatasync mode")
    ap.add_argument("--hours", type=float, default=0.0, help="soak duration (e.g. 0.05 = 3 min, 1 = 1 h)")
    ap.add_argument("--rate", type=float, default=300.0, help="soak event rate")
    ap.add_argument("--sample-s", type=float, default=10.0, help="soak RSS sampling interval")
    ap.add_argument(
        "--stall-every-s", type=float, default=0.0, help="soak: hold the writer this often (0: never)"
    )
    ap.add_argument("--stall-s", type=float, default=5.0, help="soak: for this long each time")
    ap.add_argument("--soak-only", action="store_true", help="skip the throughput runs")
    ap.add_argument(
        "--schemes", action="store_true", help="also time the raw file operations of each commit scheme"
    )
    args = ap.parse_args()
    if args.quick:
        args.events, args.baseline_events = min(args.events, 6000), min(args.baseline_events, 300)
    signal.signal(signal.SIGTERM, _terminate)
    args.root.mkdir(parents=True, exist_ok=True)
    base = args.root / f"run-{os.getpid()}"
    out: dict[str, object] = {
        "root": str(args.root.resolve()),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        if not args.soak_only:
            scheme_events = min(args.events, 2048)
            if not args.skip_repo_disk:
                out.update(fs_suite("", base, args))
                if args.schemes:
                    out.update(schemes_suite("", base, scheme_events))
            if args.fresh_ext4:
                with fresh_ext4(args.root, args.fresh_ext4_gb) as mnt:
                    out.update(fs_suite("fresh_ext4_", mnt / "bench", args))
                    if args.schemes:
                        out.update(schemes_suite("fresh_ext4_", mnt / "bench", scheme_events))
            out["target_events_per_s"] = TARGET_EVENTS_PER_S
        if args.hours > 0:
            out.update(
                soak(base / "soak", args.hours, args.rate, args.sample_s, args.stall_every_s, args.stall_s)
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
