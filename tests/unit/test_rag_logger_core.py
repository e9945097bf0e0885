"""LoggerCore: keep policy, refused input, bounded queue while storage is blocked, drain on stop."""

from __future__ import annotations

import logging
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from helpers import wait_for
from ml_defender.v1 import detection_pb2
from services.rag_logger import core as core_mod
from services.rag_logger.config import RagLoggerSettings
from services.rag_logger.core import LoggerCore
from services.rag_logger.errors import StorageError
from services.rag_logger.layout import Record
from services.rag_logger.synth import make_config_change, make_event
from services.rag_logger.verify import verify

T0 = int(datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp() * 1e9)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def settings(root: Path, **kw: object) -> RagLoggerSettings:
    base: dict[str, object] = {
        "artifacts_root": root,
        "storage": {"min_free_bytes": 0, "retry_interval_ms": 20},
        "writer_processes": 0,  # the writer as a thread: these tests replace its store's commit
    }
    base.update(kw)
    return RagLoggerSettings.model_validate(base)


@pytest.mark.unit
def test_kept_events_and_config_changes_are_written_and_acknowledged(tmp_path: Path) -> None:
    acked: list[str] = []
    core = LoggerCore(
        settings(tmp_path), clock=lambda: T0, on_commit=lambda rs: acked.extend(r.rid for r in rs)
    )
    core.start()
    rng = random.Random(3)
    kept = [make_event(T0, rng) for _ in range(20)]
    low = [make_event(T0, rng, score=0.2) for _ in range(10)]
    before = metric("mld_rag_logger_events_not_kept_total")
    assert all(core.submit(e) for e in kept)
    assert not any(core.submit(e) for e in low)
    assert core.submit(make_config_change(T0, "chg-1"))
    assert core.stop() == 0
    assert sorted(acked) == sorted([e.event_id for e in kept] + ["chg-1"])
    assert metric("mld_rag_logger_events_not_kept_total") - before == 10
    rep = verify(tmp_path)
    assert (rep.events, rep.configs, rep.problems) == (20, 1, [])


@pytest.mark.unit
def test_bad_input_is_refused_with_a_reason_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    core = LoggerCore(settings(tmp_path), clock=lambda: T0)
    before = metric("mld_rag_logger_events_dropped_total", reason="invalid")
    bad = detection_pb2.DetectionEvent(event_id="../../x", final_score=0.9)
    with caplog.at_level(logging.WARNING):
        assert not core.submit(bad)
    assert "event_id '../../x' is not 1-128 characters" in caplog.text
    assert metric("mld_rag_logger_events_dropped_total", reason="invalid") - before == 1
    core.stop()


@pytest.mark.unit
def test_blocked_storage_queues_to_the_bound_drops_are_counted_and_writing_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acked: list[str] = []
    core = LoggerCore(
        settings(tmp_path, queue_max_events=30, commit={"max_batch_events": 10, "max_delay_ms": 0}),
        clock=lambda: T0,
        on_commit=lambda rs: acked.extend(r.rid for r in rs),
    )
    full = {"on": True}
    real_commit = core.store.commit

    def commit(batch: list[Record]):  # type: ignore[no-untyped-def]
        if full["on"]:
            raise StorageError("disk_full", "disk full: No space left on device", str(tmp_path))
        return real_commit(batch)

    core.store.commit = commit  # type: ignore[method-assign]
    drops = metric("mld_rag_logger_events_dropped_total", reason="disk_full")
    core.start()
    rng = random.Random(5)
    events = [make_event(T0 + i, rng) for i in range(60)]
    with caplog.at_level(logging.WARNING):
        accepted = [e.event_id for e in events[:1] if core.submit(e)]
        wait_for(lambda: metric("mld_rag_logger_disk_full") == 1, what="disk_full gauge")
        accepted += [e.event_id for e in events[1:] if core.submit(e)]
        # the writer holds one batch (1 event) and the queue holds 30: the other 29 are dropped
        assert len(accepted) == 31
        assert metric("mld_rag_logger_events_dropped_total", reason="disk_full") - drops == 29
        assert metric("mld_rag_logger_queue_depth_events") == 30
        assert metric("mld_rag_logger_storage_blocked") == 1
        assert "writing paused" in caplog.text and "free space" in caplog.text
        full["on"] = False
        wait_for(lambda: len(acked) == 31, what="queued events written after recovery")
        assert "writing resumed" in caplog.text
    assert metric("mld_rag_logger_disk_full") == 0 and metric("mld_rag_logger_storage_blocked") == 0
    assert core.stop() == 0
    assert sorted(acked) == sorted(accepted)
    assert verify(tmp_path).ids == set(accepted)


@pytest.mark.unit
def test_stop_while_blocked_gives_up_after_the_drain_timeout_and_counts_it(tmp_path: Path) -> None:
    core = LoggerCore(
        settings(tmp_path, storage={"min_free_bytes": 0, "retry_interval_ms": 20, "drain_timeout_s": 0.2})
    )

    def commit(batch: list[Record]):  # type: ignore[no-untyped-def]
        raise StorageError("read_only", "read only: Read-only file system", str(tmp_path))

    core.store.commit = commit  # type: ignore[method-assign]
    before = metric("mld_rag_logger_events_dropped_total", reason="shutdown")
    core.start()
    rng = random.Random(2)
    for _ in range(5):
        core.submit(make_event(time.time_ns(), rng))
    t = time.monotonic()
    assert core.stop() == 5
    assert time.monotonic() - t < 5
    assert metric("mld_rag_logger_events_dropped_total", reason="shutdown") - before == 5


@pytest.mark.unit
def test_min_free_bytes_blocks_before_the_disk_is_really_full(tmp_path: Path) -> None:
    core = LoggerCore(settings(tmp_path, storage={"min_free_bytes": 1 << 62, "retry_interval_ms": 20}))
    core.start()
    core.submit(make_event(T0, random.Random(1)))
    wait_for(lambda: metric("mld_rag_logger_disk_full") == 1, what="disk_full from the free-space reserve")
    core.update_settings(settings(tmp_path))  # hot: reserve lowered to 0
    wait_for(lambda: verify(tmp_path).events == 1, what="event written after the reserve was lowered")
    assert core.stop() == 0


@pytest.mark.unit
def test_a_writer_bug_is_loud_and_stops_the_service(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fatal: list[BaseException] = []

    def broken_ack(records: list[Record]) -> None:
        raise RuntimeError("bug in a callback")

    core = LoggerCore(settings(tmp_path), on_commit=broken_ack, on_fatal=fatal.append)
    with caplog.at_level(logging.CRITICAL):
        core.start()
        core.submit(make_event(time.time_ns(), random.Random(1)))
        wait_for(lambda: fatal, what="on_fatal called")
    assert isinstance(core.failed, RuntimeError) and "writer thread failed" in caplog.text
    assert not core.submit(make_event(time.time_ns(), random.Random(2)))  # refused and counted as shutdown
    core.stop()


@pytest.mark.unit
def test_keep_policy_is_hot_reloadable(tmp_path: Path) -> None:
    acked: list[str] = []
    core = LoggerCore(
        settings(tmp_path), clock=lambda: T0, on_commit=lambda rs: acked.extend(r.rid for r in rs)
    )
    core.start()
    rng = random.Random(8)
    mid = make_event(T0, rng, score=0.6)  # below the default final_min of 0.70
    assert not core.submit(mid)
    core.update_settings(settings(tmp_path, keep={"final_min": 0.5}))
    again = make_event(T0, rng, score=0.6)
    assert core.submit(again)
    assert core.stop() == 0
    assert acked == [again.event_id]


@pytest.mark.unit
def test_free_heap_memory_is_handed_back_once_a_deep_backlog_has_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RSS used to step up after each backlog (glibc kept the freed pair buffers): trim once drained."""
    trims: list[int] = []

    def fake_trim() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(core_mod, "release_free_memory", fake_trim)
    acked: list[str] = []
    core = LoggerCore(
        settings(tmp_path, commit={"max_batch_events": 64, "max_delay_ms": 1}),
        clock=lambda: T0,
        on_commit=lambda rs: acked.extend(r.rid for r in rs),
    )
    stalled = {"on": True}
    real_commit = core.store.commit

    def commit(batch: list[Record]):  # type: ignore[no-untyped-def]
        while stalled["on"]:
            time.sleep(0.005)
        return real_commit(batch)

    core.store.commit = commit  # type: ignore[method-assign]
    before = metric("mld_rag_logger_memory_trims_total")
    core.start()
    rng = random.Random(8)
    small = [make_event(T0 + i, rng) for i in range(core_mod.TRIM_AFTER_BACKLOG_EVENTS - 10)]
    for ev in small:  # a backlog below the threshold: no trim
        assert core.submit(ev)
    stalled["on"] = False
    wait_for(lambda: len(acked) == len(small), what="small backlog written")
    assert trims == []
    stalled["on"] = True
    deep = [make_event(T0 + 10_000 + i, rng) for i in range(core_mod.TRIM_AFTER_BACKLOG_EVENTS + 100)]
    for ev in deep:
        assert core.submit(ev)
    stalled["on"] = False
    wait_for(lambda: len(acked) == len(small) + len(deep), what="deep backlog written")
    wait_for(lambda: trims == [1], what="one trim after the deep backlog drained")
    assert core.memory_trims == 1
    assert metric("mld_rag_logger_memory_trims_total") - before == 1
    assert core.stop() == 0
