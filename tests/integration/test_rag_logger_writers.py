"""The rag-logger's writer processes (`writer_processes`), real children on a real filesystem.

Records are spread over the writers by id; each writer's child derives the .json and commits; the
service keeps the acknowledgements and the single .jsonl. A child that dies is replaced and its
batch retried; start-up recovery waits for writers that are still alive (a killed service's, or
another service's) and its counters reach the service's metrics.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from helpers import wait_for
from services.rag_logger import layout
from services.rag_logger.config import RagLoggerSettings
from services.rag_logger.core import LoggerCore
from services.rag_logger.layout import Record
from services.rag_logger.synth import make_config_change, make_event
from services.rag_logger.verify import verify
from services.rag_logger.writer import LOCK_NAME

T0 = int(datetime(2026, 4, 2, 9, 0, tzinfo=UTC).timestamp() * 1e9)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def settings(root: Path, writers: int = 2, **commit: object) -> RagLoggerSettings:
    return RagLoggerSettings.model_validate(
        {
            "artifacts_root": root,
            "writer_processes": writers,
            "storage": {"min_free_bytes": 0, "retry_interval_ms": 50},
            "commit": {"max_batch_events": 64, "max_delay_ms": 2, **commit},
        }
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def jsonl_lines(root: Path) -> list[bytes]:
    return [line for p in sorted(root.glob("*/events-*.jsonl")) for line in p.read_bytes().splitlines()]


@pytest.mark.integration
def test_two_writers_write_every_event_once_with_one_jsonl(tmp_path: Path) -> None:
    acked: list[str] = []
    lock = threading.Lock()

    def ack(records: list[Record]) -> None:
        with lock:
            acked.extend(r.rid for r in records)

    core = LoggerCore(settings(tmp_path), clock=lambda: T0, on_commit=ack)
    core.start()
    rng = random.Random(12)
    events = [make_event(T0 + i * 1_000_000, rng) for i in range(1500)]
    by_writer = [core.writer_of(e.event_id) for e in events]
    assert set(by_writer) == {0, 1}  # both writers get a share
    dup_before = metric("mld_rag_logger_events_dropped_total", reason="duplicate")
    for ev in events:
        assert core.submit(ev)
    assert core.submit(make_config_change(T0, "chg-w1"))
    wait_for(lambda: len(acked) == len(events) + 1, timeout=60, what="all events acknowledged")
    pids = [st.pid for st in core.stores]
    assert len(set(pids)) == 2 and all(p is not None and alive(p) for p in pids)
    redelivered = events[:40]  # at-least-once delivery sends some again: the same writer drops them
    for ev in redelivered:
        again = type(ev)()
        again.CopyFrom(ev)
        assert core.submit(again)
    wait_for(
        lambda: metric("mld_rag_logger_events_dropped_total", reason="duplicate") - dup_before == 40,
        what="redelivered events counted as duplicates",
    )
    assert core.stop() == 0
    assert all(not alive(p) for p in pids if p is not None), "writer processes left running"
    assert sorted(acked) == sorted([e.event_id for e in events] + ["chg-w1"])
    rep = verify(tmp_path)
    assert (rep.events, rep.configs, rep.problems) == (1500, 1, [])
    lines = jsonl_lines(tmp_path)
    assert len(lines) == 1500  # one appender: every event once, whole lines
    day = layout.day_of(T0)
    for line in lines[:50]:
        doc = json.loads(line)
        assert (tmp_path / day / f"event_{doc['event_id']}.json").read_bytes() == line


@pytest.mark.integration
def test_a_killed_writer_process_is_replaced_and_its_batch_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acked: list[str] = []
    lock = threading.Lock()

    def ack(records: list[Record]) -> None:
        with lock:
            acked.extend(r.rid for r in records)

    core = LoggerCore(settings(tmp_path, max_batch_events=16), on_commit=ack)
    errors_before = metric("mld_rag_logger_storage_errors_total", reason="writer_process")
    rng = random.Random(4)
    accepted: list[str] = []
    with caplog.at_level(logging.INFO):
        core.start()
        wait_for(lambda: all(st.ready for st in core.stores), timeout=30, what="writers up")
        victim = core.stores[1].pid
        assert victim is not None
        deadline = time.monotonic() + 30
        for i in range(3000):  # bounded: count and time
            if time.monotonic() > deadline:
                break
            ev = make_event(time.time_ns(), rng)
            if core.submit(ev):
                accepted.append(ev.event_id)
            if i == 800:
                os.kill(victim, signal.SIGKILL)
            if i % 100 == 0:
                time.sleep(0.01)
        wait_for(lambda: len(acked) == len(accepted), timeout=60, what="every accepted event written")
    new = core.stores[1].pid
    assert new is not None and new != victim and alive(new)
    assert core.stores[1].restarts == 1
    assert metric("mld_rag_logger_storage_errors_total", reason="writer_process") - errors_before >= 1
    assert "writer process 1 exited" in caplog.text
    assert core.stop() == 0
    assert sorted(acked) == sorted(accepted)
    rep = verify(tmp_path)
    assert rep.problems == [] and rep.ids == set(accepted)
    assert len(jsonl_lines(tmp_path)) >= len(accepted)  # best effort: a retried batch may repeat lines


@pytest.mark.integration
def test_recovery_waits_for_a_live_writer_then_repairs_and_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a directory left by a crash: one .pb whose .json was never named
    first = LoggerCore(settings(tmp_path, writers=0), clock=lambda: T0)
    first.start()
    ev = make_event(T0, random.Random(1))
    assert first.submit(ev)
    assert first.stop() == 0
    day = layout.day_of(T0)
    (tmp_path / day / f"event_{ev.event_id}.json").unlink()
    # ... and a writer of the killed service still alive: it holds the writers' lock (shared)
    old = os.open(tmp_path / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(old, fcntl.LOCK_SH)
    repaired_before = metric("mld_rag_logger_pairs_repaired_total")
    acked: list[str] = []
    core = LoggerCore(
        settings(tmp_path), clock=lambda: T0, on_commit=lambda rs: acked.extend(r.rid for r in rs)
    )
    for st in core.stores:
        st.lock_wait_s = 0.3  # type: ignore[union-attr]
    try:
        with caplog.at_level(logging.INFO):
            core.start()
            later = make_event(T0 + 5, random.Random(2))
            assert core.submit(later)
            wait_for(lambda: core.blocked_reason == "locked", timeout=20, what="recovery refused: locked")
            assert (
                "another rag-logger writer holds" in caplog.text
                and "stop the other rag-logger" in caplog.text
            )
            assert metric("mld_rag_logger_storage_blocked") == 1
            time.sleep(0.5)
            assert acked == [] and not (tmp_path / day / f"event_{ev.event_id}.json").exists()
            fcntl.flock(old, fcntl.LOCK_UN)  # the old writer is gone
            wait_for(lambda: acked == [later.event_id], timeout=20, what="written once the lock is free")
        assert metric("mld_rag_logger_pairs_repaired_total") - repaired_before == 1  # counted in the child
        assert metric("mld_rag_logger_storage_blocked") == 0
    finally:
        os.close(old)
        assert core.stop() == 0
    rep = verify(tmp_path)
    assert rep.problems == [] and rep.ids == {ev.event_id, later.event_id}
