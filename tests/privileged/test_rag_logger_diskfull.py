"""Disk full and read-only on a small tmpfs: whole files only, a clear error, recovery afterwards."""

from __future__ import annotations

import logging
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from helpers import wait_for
from services.rag_logger import layout
from services.rag_logger.config import RagLoggerSettings
from services.rag_logger.core import LoggerCore
from services.rag_logger.synth import make_event
from services.rag_logger.verify import verify


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def small_fs(require_root: None, tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of our own (about 30 events), unmounted in teardown whatever happens."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "mld-rag-logger-test", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def remount(mnt: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)


def start_core(root: Path, acked: list[str], jsonl: bool = True, writers: int = 1) -> LoggerCore:
    s = RagLoggerSettings.model_validate(
        {
            "artifacts_root": root,
            "writer_processes": writers,
            "jsonl": {"enabled": jsonl},
            "queue_max_events": 50,
            "commit": {"max_batch_events": 8, "max_delay_ms": 1},
            "storage": {"min_free_bytes": 0, "retry_interval_ms": 50},
        }
    )
    core = LoggerCore(s, on_commit=lambda rs: acked.extend(r.rid for r in rs))
    core.start()
    return core


def assert_whole_files_only(root: Path) -> None:
    names = [p.name for p in root.rglob("*") if p.is_file()]
    assert not [n for n in names if layout.is_tmp(n)], "a temp file was left behind"
    rep = verify(root)
    assert rep.problems == [], rep.problems[:3]


@pytest.mark.privileged
@pytest.mark.parametrize("writers", [0, 1, 2], ids=["in-thread", "one-process", "two-processes"])
def test_disk_full_blocks_counts_drops_and_recovers(
    small_fs: Path, caplog: pytest.LogCaptureFixture, writers: int
) -> None:
    acked: list[str] = []
    root = small_fs / "artifacts"
    drops = metric("mld_rag_logger_events_dropped_total", reason="disk_full")
    errors = metric("mld_rag_logger_storage_errors_total", reason="disk_full")
    core = start_core(root, acked, writers=writers)
    rng = random.Random(4)
    accepted: list[str] = []
    try:
        with caplog.at_level(logging.INFO):
            # fill the disk one event at a time (the 256 KiB hold about 30), so the bound is reached
            # only once the writer is blocked
            for _ in range(200):
                ev = make_event(time.time_ns(), rng)
                assert core.submit(ev)
                accepted.append(ev.event_id)
                wait_for(
                    lambda: len(acked) == len(accepted) or metric("mld_rag_logger_disk_full") == 1,
                    timeout=20,
                    what="event written or disk full",
                )
                if metric("mld_rag_logger_disk_full") == 1:
                    break
            assert metric("mld_rag_logger_disk_full") == 1, "the small filesystem never filled up"
            assert metric("mld_rag_logger_storage_blocked") == 1
            assert metric("mld_rag_logger_storage_errors_total", reason="disk_full") > errors
            assert "writing paused" in caplog.text and "No space left on device" in caplog.text
            assert "free space on the artifacts filesystem" in caplog.text
            # while blocked: the queue takes 50 (its bound), the other 50 are dropped and counted.
            # With two writers the bound is 25 each; the one not blocked yet may take one more
            # batch (8) out of its queue before it finds the disk full too.
            more = [make_event(time.time_ns(), rng) for _ in range(100)]
            queued = [e.event_id for e in more if core.submit(e)]
            accepted += queued
            dropped = metric("mld_rag_logger_events_dropped_total", reason="disk_full") - drops
            if writers < 2:
                assert len(queued) == 50
            else:
                assert 50 <= len(queued) <= 58
            assert dropped == 100 - len(queued)
            assert 0 < len(acked) < len(accepted)
            assert_whole_files_only(root)
            assert verify(root).ids == set(acked)  # what was acknowledged is there, nothing else

            remount(small_fs, "size=16m")  # space returns
            wait_for(
                lambda: len(acked) == len(accepted), timeout=30, what="queued events written after recovery"
            )
            assert "writing resumed" in caplog.text
        assert metric("mld_rag_logger_disk_full") == 0 and metric("mld_rag_logger_storage_blocked") == 0
        assert sorted(acked) == sorted(accepted)
        assert_whole_files_only(root)
        assert verify(root).ids == set(accepted)
    finally:
        core.stop(timeout=30)


@pytest.mark.privileged
def test_read_only_filesystem_blocks_and_recovers(small_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    acked: list[str] = []
    root = small_fs / "artifacts"
    core = start_core(root, acked, jsonl=False)  # an open .jsonl would make `remount,ro` fail (busy)
    rng = random.Random(5)
    try:
        first = make_event(time.time_ns(), rng)
        core.submit(first)
        wait_for(lambda: acked == [first.event_id], what="first event written")
        remount(small_fs, "ro")
        with caplog.at_level(logging.INFO):
            later = [make_event(time.time_ns(), rng) for _ in range(5)]
            assert all(core.submit(e) for e in later)
            wait_for(lambda: metric("mld_rag_logger_storage_blocked") == 1, timeout=20, what="blocked gauge")
            assert metric("mld_rag_logger_disk_full") == 0
            assert "Read-only file system" in caplog.text and "remount" in caplog.text
            remount(small_fs, "rw")
            wait_for(lambda: len(acked) == 6, timeout=20, what="events written after remount rw")
        assert_whole_files_only(root)
        assert verify(root).ids == {first.event_id} | {e.event_id for e in later}
    finally:
        core.stop(timeout=30)
