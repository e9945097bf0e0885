"""accelerate/decelerate/optimize: pure steps, bounds, profile choice, and the audited CAS edit (fake etcd)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.etcd_client.testing import FakeEtcd
from services.rag.errors import TuningError
from services.rag.tuning import (
    STEPPED,
    Limits,
    Usage,
    apply_profile,
    choose_profile,
    commit,
    current_document,
    flat_diff,
    step_thresholds,
)


def doc(**th: float) -> dict:  # type: ignore[type-arg]
    return {"thresholds": dict(STEPPED, **th), "engine": "lightgbm"}


@pytest.mark.unit
def test_accelerate_lowers_every_threshold_one_step() -> None:
    new = step_thresholds(doc(), -1, 0.05)
    assert new["thresholds"] == {
        "drop": 0.65,
        "alert": 0.45,
        "divergence": 0.25,
        "rag_final": 0.8,
        "consensus_ml": 0.45,
    }
    assert new["engine"] == "lightgbm"


@pytest.mark.unit
@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.decimals(min_value="0.40", max_value="0.90", places=3), min_size=5, max_size=5),
    step=st.sampled_from([0.01, 0.02, 0.05, 0.1]),
    n=st.integers(min_value=1, max_value=3),
)
def test_accelerate_then_decelerate_restores_exactly(values: list, step: float, n: int) -> None:  # type: ignore[type-arg]
    start = {"thresholds": {k: float(v) for k, v in zip(STEPPED, values, strict=True)}, "other": {"x": 1}}
    cur = start
    wide = {k: (0.0, 1.0) for k in STEPPED}
    for _ in range(n):
        cur = step_thresholds(cur, -1, step, wide)
    for _ in range(n):
        cur = step_thresholds(cur, +1, step, wide)
    assert cur == start


@pytest.mark.unit
def test_out_of_bounds_step_is_refused_whole() -> None:
    d = doc(divergence=0.12)
    with pytest.raises(TuningError, match=r"divergence 0.12 -> 0.07 \(bounds 0.1..0.6\)"):
        step_thresholds(d, -1, 0.05)
    assert d["thresholds"]["divergence"] == 0.12  # input untouched
    with pytest.raises(TuningError, match="rag_final"):
        step_thresholds(doc(rag_final=0.97), +1, 0.05)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("usage", "profile"),
    [
        (Usage(10, 1000, 40), "performance"),
        (Usage(70, 1000, None), "balanced"),
        (Usage(20, 3800, None), "economy"),
        (Usage(20, 1000, 90), "minimal"),
    ],
)
def test_profile_follows_the_worst_pressure(usage: Usage, profile: str) -> None:
    got, _worst, reasons = choose_profile(usage, Limits(100, 4000, 80))
    assert got == profile and reasons


@pytest.mark.unit
def test_profile_notes_missing_temperature_and_rejects_bad_limits() -> None:
    _p, _w, reasons = choose_profile(Usage(10, 100, None), Limits(50, 1000, 70))
    assert any("not reported" in r for r in reasons)
    with pytest.raises(TuningError):
        choose_profile(Usage(10, 100, None), Limits(0, 1000, None))


@pytest.mark.unit
def test_apply_profile_and_diff() -> None:
    new = apply_profile({"batch": {"max_flows": 4096}}, "ml-detector", "economy")
    assert new == {"batch": {"max_flows": 4096, "max_wait_ms": 10}, "explain": {"top_k": 1}}
    assert flat_diff({"batch": {"max_flows": 4096}}, new) == [
        ("batch.max_wait_ms", None, 10),
        ("explain.top_k", None, 1),
    ]


@pytest.mark.unit
def test_commit_writes_by_cas_with_an_audit_entry() -> None:
    client = FakeEtcd()
    before = current_document(client, "ml-detector")  # defaults when the key is absent
    r = commit(client, "ml-detector", lambda d: step_thresholds(d, -1, 0.05), "rag accelerate", "test", 3)
    assert client.get("config/ml-detector")["thresholds"]["drop"] == 0.65
    audits = client.get_prefix("audit/")
    assert len(audits) == 1 and client.decode(audits[0])["command"] == "rag accelerate"
    commit(client, "ml-detector", lambda d: step_thresholds(d, +1, 0.05), "rag decelerate", "test", 3)
    assert client.get("config/ml-detector")["thresholds"] == before["thresholds"]
    assert r.new_revision > r.old_revision
