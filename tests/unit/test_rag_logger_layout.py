"""Keep policy, record encoding and settings of the rag-logger (pure functions)."""

from __future__ import annotations

import json
import math
import os
import random
from datetime import UTC, datetime

import pytest

from libs.common.errors import ConfigError
from libs.common.events import event_to_dict
from libs.common.settings import validate_settings
from ml_defender.v1 import detection_pb2
from services.rag_logger import layout
from services.rag_logger.config import HOT_FIELDS, KeepPolicy, RagLoggerSettings, default_writer_processes
from services.rag_logger.policy import keep_reason
from services.rag_logger.synth import make_config_change, make_event

T0 = int(datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC).timestamp() * 1e9)


def _ev(final: float = 0.1, div: float = 0.0, rag: bool = False) -> detection_pb2.DetectionEvent:
    return detection_pb2.DetectionEvent(event_id="e1", final_score=final, divergence=div, rag_required=rag)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("final", "div", "rag", "expected"),
    [
        (0.69, 0.0, False, None),
        (0.70, 0.0, False, "final"),
        (0.2, 0.30, False, "divergence"),
        (0.2, 0.29, False, None),
        (0.1, 0.0, True, "rag_required"),
        (math.nan, math.nan, False, None),
    ],
)
def test_keep_policy_follows_design_thresholds(
    final: float, div: float, rag: bool, expected: str | None
) -> None:
    assert keep_reason(_ev(final, div, rag), KeepPolicy()) == expected


@pytest.mark.unit
def test_keep_policy_is_configurable() -> None:
    assert keep_reason(_ev(0.75), KeepPolicy(final_min=0.8)) is None
    assert keep_reason(_ev(0.1, rag=True), KeepPolicy(rag_required=False)) is None
    assert keep_reason(_ev(0.0), KeepPolicy(keep_all=True)) == "all"


@pytest.mark.unit
def test_encode_event_stamps_logged_time_and_uses_the_event_day() -> None:
    ev = make_event(T0, random.Random(1))
    rec = layout.encode_event(ev, now_ns=T0 + 5_000_000_000)  # logged after midnight
    assert rec.day == "2026-03-01"  # the event's own day, not the logger's
    parsed = detection_pb2.DetectionEvent.FromString(rec.pb)
    assert parsed.timestamps.logged_ns == T0 + 5_000_000_000
    assert json.loads(rec.js) == json.loads(json.dumps(event_to_dict(parsed)))
    assert layout.expected_json("event", rec.pb) == json.loads(rec.js)


@pytest.mark.unit
def test_json_derived_from_the_pb_is_the_same_bytes_as_encoded_directly() -> None:
    """The writer processes derive each .json from its .pb: it must equal what encode_event makes."""
    rng = random.Random(21)
    for i in range(400):
        ev = make_event(T0 + i * 7_919_000_001, rng, score=rng.random())
        if i % 3 == 0:
            ev.flow.key.src_addr = bytes(rng.randrange(256) for _ in range(16))  # IPv6
        if i % 5 == 0:
            ev.ClearField("explanation")
        copy = detection_pb2.DetectionEvent()
        copy.CopyFrom(ev)
        direct = layout.encode_event(ev, T0 + i)
        lazy = layout.encode_event(copy, T0 + i, with_json=False)
        assert lazy.js == b""  # (the .pb bytes may differ: protobuf map order is not fixed)
        assert layout.complete_json(lazy) is True
        assert lazy.js == direct.js
        assert layout.complete_json(lazy) is False  # already there: left alone
    change = make_config_change(T0, "chg-9")
    rec = layout.encode_config(change, T0)
    again = layout.Record(rec.kind, rec.rid, rec.day, rec.pb, b"")
    layout.complete_json(again)
    assert again.js == rec.js


@pytest.mark.unit
def test_event_without_time_goes_to_the_day_it_was_logged() -> None:
    ev = detection_pb2.DetectionEvent(event_id="abc", final_score=0.9)
    assert layout.encode_event(ev, T0 + 10**10).day == "2026-03-02"


@pytest.mark.unit
@pytest.mark.parametrize("bad_id", ["", "../etc/passwd", "a/b", ".hidden", "x" * 200, "id with space"])
def test_ids_that_cannot_name_a_file_are_refused(bad_id: str) -> None:
    ev = make_event(T0, random.Random(1), event_id="ok")
    ev.event_id = bad_id
    with pytest.raises(ValueError, match="event_id"):
        layout.encode_event(ev, T0)


@pytest.mark.unit
def test_non_finite_scores_are_refused_with_the_field_named() -> None:
    ev = make_event(T0, random.Random(1))
    ev.ml_scores["ransomware"] = math.inf
    with pytest.raises(ValueError, match=r"ml_scores\[ransomware\] is inf"):
        layout.encode_event(ev, T0)


@pytest.mark.unit
def test_config_change_record() -> None:
    rec = layout.encode_config(make_config_change(T0, "c-1"), T0 + 1)
    assert (rec.kind, rec.rid, rec.day) == ("config", "c-1", "2026-03-01")
    assert json.loads(rec.js)["diff"][0]["path"] == "thresholds.drop"


@pytest.mark.unit
def test_writer_processes_default_to_two_where_there_are_two_cpus() -> None:
    assert [default_writer_processes(c) for c in (None, 1, 2, 4, 64)] == [0, 0, 2, 2, 2]
    assert RagLoggerSettings().writer_processes == default_writer_processes(os.cpu_count())
    assert RagLoggerSettings(writer_processes=0).writer_processes == 0
    with pytest.raises(ValueError):
        RagLoggerSettings(writer_processes=-1)


@pytest.mark.unit
def test_settings_defaults_match_the_lab_wiring() -> None:
    s = RagLoggerSettings()
    assert s.input.endpoint == "tcp://127.0.0.1:5573" and s.input.bind
    assert s.metrics.port == 9103
    assert str(s.artifacts_root) == "logs/rag/artifacts"
    assert (s.keep.final_min, s.keep.divergence_min) == (0.70, 0.30)
    assert set(HOT_FIELDS) <= set(RagLoggerSettings.model_fields)


@pytest.mark.unit
def test_settings_reject_unknown_and_out_of_range_fields() -> None:
    with pytest.raises(ConfigError, match=r"keep\.final_min"):
        validate_settings(RagLoggerSettings, {"keep": {"final_min": 1.5}}, "test.json")
    with pytest.raises(ConfigError, match="bogus"):
        validate_settings(RagLoggerSettings, {"commit": {"bogus": 1}}, "test.json")
