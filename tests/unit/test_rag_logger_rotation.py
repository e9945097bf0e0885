"""Day rotation with an injected clock crossing UTC midnight while events stream in."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.rag_logger import layout
from services.rag_logger.config import RagLoggerSettings
from services.rag_logger.core import LoggerCore
from services.rag_logger.synth import make_event
from services.rag_logger.verify import verify

MIDNIGHT = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1e9)


class FakeClock:
    """Wall clock under test control; the producer advances it, the writer reads it."""

    def __init__(self, ns: int) -> None:
        self.ns = ns
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            return self.ns

    def advance(self, ns: int) -> int:
        with self.lock:
            self.ns += ns
            return self.ns


@pytest.mark.unit
def test_midnight_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    n, step = 1200, 1_000_000  # 1.2 s of events at 1 ms spacing, centred on midnight
    clock = FakeClock(MIDNIGHT - n // 2 * step)
    s = RagLoggerSettings.model_validate(
        {
            "artifacts_root": tmp_path,
            "storage": {"min_free_bytes": 0},
            "commit": {"max_batch_events": 64, "max_delay_ms": 1, "fsync": False},
        }
    )
    acked: list[str] = []
    core = LoggerCore(s, clock=clock, on_commit=lambda rs: acked.extend(r.rid for r in rs))
    rotations = REGISTRY.get_sample_value("mld_rag_logger_rotations_total") or 0.0
    core.start()
    rng = random.Random(7)
    day_of: dict[str, str] = {}

    def produce(count: int) -> None:
        for _ in range(count):
            ts = clock.advance(step)
            ev = make_event(ts, rng)
            day_of[ev.event_id] = layout.day_of(ts)
            assert core.submit(ev)

    producer = threading.Thread(target=produce, args=(n,))
    producer.start()
    producer.join(60)
    # a late event from before midnight arrives after the writer rotated
    late = make_event(MIDNIGHT - 10 * step, rng)
    day_of[late.event_id] = "2026-03-01"
    assert core.submit(late)
    assert core.stop() == 0

    assert len(acked) == len(set(acked)) == n + 1
    expected = Counter(day_of.values())
    assert expected["2026-03-01"] > 500 and expected["2026-03-02"] > 500
    rep = verify(tmp_path)
    assert rep.problems == [] and rep.ids == set(day_of)
    for day in ("2026-03-01", "2026-03-02"):
        ddir = tmp_path / day
        pbs = {p.name[len("event_") : -len(".pb")] for p in ddir.glob("event_*.pb")}
        assert pbs == {i for i, d in day_of.items() if d == day}
        lines = (ddir / f"events-{day}.jsonl").read_bytes().splitlines()
        ids = [json.loads(line)["event_id"] for line in lines]
        assert len(ids) == len(set(ids)) == expected[day]  # each event once, in its own day's file
        assert set(ids) == pbs
    assert (REGISTRY.get_sample_value("mld_rag_logger_rotations_total") or 0.0) - rotations == 1
