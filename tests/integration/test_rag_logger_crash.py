"""Crash test: a writer under load is SIGKILLed at random moments, 50 times.

The child process runs the service's LoggerCore (the code behind `mld-rag-logger run`, minus the
socket) and prints each event id on stdout once its commit returned, i.e. after the directory
fsync. After every kill, `verify` must find whole files only (at most the one .pb whose .json
rename was cut off, which the next start completes) and every acknowledged event as a whole pair.
Five kills share one directory, so four of five children start on a crashed directory and run the
start-up recovery themselves.

Run as a script (`python test_rag_logger_crash.py child ROOT SEED`) it is the child.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers when run as a script
from helpers import REPO, wait_for
from services.rag_logger.verify import repair, verify

KILLS = int(os.environ.get("MLD_RAG_LOGGER_KILLS", "50"))
KILLS_PER_DIR = 5


def child(root: str, seed: int, out_fd: int) -> None:
    """Write events as fast as the writer takes them for at most 20 s / 50k events; ack on out_fd."""
    from services.rag_logger.config import RagLoggerSettings
    from services.rag_logger.core import LoggerCore
    from services.rag_logger.layout import Record
    from services.rag_logger.synth import make_config_change, make_event

    rng = random.Random(seed)
    settings = RagLoggerSettings.model_validate(
        {
            "artifacts_root": root,
            "storage": {"min_free_bytes": 0},
            "commit": {"max_batch_events": rng.choice([1, 8, 64, 256]), "max_delay_ms": 2},
            "writer_processes": rng.choice([0, 1, 2]),  # the writer as a thread, or its processes
        }
    )

    def ack(records: list[Record]) -> None:
        os.write(out_fd, "".join(f"{r.kind} {r.rid}\n" for r in records).encode())

    core = LoggerCore(settings, on_commit=ack)
    core.start()
    os.write(out_fd, b"ready\n")
    deadline = time.monotonic() + 20
    for i in range(50_000):
        if time.monotonic() > deadline:
            break
        while core.queue_depth() > 1000:  # bounded backlog: the kill should hit commits, not a queue
            time.sleep(0.001)
        if i % 97 == 0:
            core.submit(make_config_change(time.time_ns()))
        core.submit(make_event(time.time_ns(), rng))
    core.stop()


def zygote() -> None:
    """Fork one child per request (`ROOT SEED FIFO` on stdin, pid answered on stdout).

    The imports are paid once here instead of 50 times, which keeps the test short.
    """
    import services.rag_logger.core
    import services.rag_logger.synth  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("zygote ready", flush=True)
    for line in sys.stdin:
        root, seed, fifo = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                child(root, int(seed), os.open(fifo, os.O_WRONLY))
            finally:
                os._exit(0)
        print(pid, flush=True)


def _read_lines(fifo: Path, out: list[str], done: threading.Event) -> None:
    """Read acknowledged ids until EOF, which comes when the killed child's last fd is gone."""
    fd = os.open(fifo, os.O_RDONLY)
    buf = b""
    try:
        while chunk := os.read(fd, 65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            out.extend(line.decode() for line in lines)  # a line cut by the kill stays in buf: ignored
    finally:
        os.close(fd)
        done.set()


@pytest.mark.integration
def test_sigkill_at_random_moments_leaves_whole_pairs_and_every_acked_event(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("MLD_RAG_LOGGER_CRASH_SEED", "20260301")))
    zyg = subprocess.Popen(
        [sys.executable, __file__, "zygote"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the children's recovery log lines are expected; the checks are the test
        text=True,
    )
    try:
        assert zyg.stdout.readline().strip() == "zygote ready"  # type: ignore[union-attr]
        _crash_loop(tmp_path, rng, zyg)
    finally:
        zyg.stdin.close()  # type: ignore[union-attr]
        try:
            zyg.wait(10)
        except subprocess.TimeoutExpired:
            zyg.kill()
            zyg.wait(10)


def _crash_loop(tmp_path: Path, rng: random.Random, zyg: subprocess.Popen[str]) -> None:
    acked_total = 0
    half_pairs_seen = 0
    acked: set[str] = set()
    root = tmp_path
    for i in range(KILLS):
        if i % KILLS_PER_DIR == 0:
            if i:
                shutil.rmtree(root)
            root = tmp_path / f"dir{i // KILLS_PER_DIR}"
            acked = set()
        lines: list[str] = []
        fifo = tmp_path / f"ack{i}"
        os.mkfifo(fifo)
        done = threading.Event()
        reader = threading.Thread(target=_read_lines, args=(fifo, lines, done), daemon=True)
        reader.start()
        zyg.stdin.write(f"{root} {rng.getrandbits(32)} {fifo}\n")  # type: ignore[union-attr]
        zyg.stdin.flush()  # type: ignore[union-attr]
        pid = int(zyg.stdout.readline())  # type: ignore[union-attr]
        try:
            wait_for(lambda out=lines: out[:1] == ["ready"], timeout=30, what=f"child {i} ready")
            # Kill while it is writing: wait for its first acknowledgement (a loaded machine can
            # take longer than the random delay to get going), then pick the moment.
            wait_for(lambda out=lines: len(out) >= 2, timeout=30, what=f"child {i} first ack")
            time.sleep(rng.uniform(0.05, 0.5))  # the random moment of the kill
            assert not done.is_set(), f"child {i} ended before its kill"
        finally:
            os.kill(pid, signal.SIGKILL)
            assert done.wait(20), f"child {i} (pid {pid}) still holds its ack pipe after SIGKILL"
            reader.join(5)
            fifo.unlink()
        new = {line.split(" ", 1)[1] for line in lines[1:] if line.startswith(("event ", "config "))}
        acked |= new
        acked_total += len(new)

        if not root.exists():
            # Killed before its first write: nothing may have been acknowledged.
            assert not acked, f"kill {i}: events acknowledged but {root} was never created"
            continue
        rep = verify(root)
        kinds = [p.what for p in rep.problems]
        assert set(kinds) <= {"half pair: the .json is missing"}, f"kill {i}: {rep.problems}"
        assert len(kinds) <= 1, (
            f"kill {i}: more than the one pair being renamed is incomplete: {rep.problems}"
        )
        half_pairs_seen += len(kinds)
        on_disk = rep.ids | {p.name[len("config_") : -len(".json")] for p in root.glob("*/config_*.json")}
        missing = acked - on_disk
        assert not missing, (
            f"kill {i}: {len(missing)} acknowledged records missing, e.g. {sorted(missing)[:3]}"
        )
        if i % KILLS_PER_DIR == KILLS_PER_DIR - 1:
            repair(root)
            rep = verify(root)
            assert rep.problems == [] and rep.notes == [], (
                f"after repair {i}: {rep.problems[:3]} {rep.notes[:3]}"
            )
    # the kills must have hit a writer that was really writing
    assert acked_total >= KILLS * 2, f"only {acked_total} acknowledged events over {KILLS} kills"
    print(f"{KILLS} kills, {acked_total} acknowledged events, {half_pairs_seen} half pairs completed")


if __name__ == "__main__" and sys.argv[1:] == ["zygote"]:
    zygote()
