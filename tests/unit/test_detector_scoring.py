"""Scoring rules of DESIGN.md section 3 (services/ml_detector/scoring.py), without models or sockets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml_defender.v1 import detection_pb2 as D
from services.ml_detector.config import DetectorSettings, ThresholdSettings
from services.ml_detector.scoring import score

TH = ThresholdSettings()


def one(fast: float, ml: dict[str, float], rules: list[str] | None = None, th: ThresholdSettings = TH):
    s = score(np.array([fast]), {k: np.array([v]) for k, v in ml.items()}, [rules or []], th)
    return s, 0


@pytest.mark.unit
@pytest.mark.parametrize(
    ("fast", "ml", "cls", "decision"),
    [
        (0.0, 0.05, D.CLASSIFICATION_BENIGN, D.DECISION_ALLOW),
        (0.75, 0.9, D.CLASSIFICATION_CONSENSUS, D.DECISION_DROP),
        (0.75, 0.6, D.CLASSIFICATION_CONSENSUS, D.DECISION_DROP),
        (0.75, 0.1, D.CLASSIFICATION_DIVERGENCE, D.DECISION_DROP),
        (0.0, 0.95, D.CLASSIFICATION_DIVERGENCE, D.DECISION_DROP),
        (0.0, 0.55, D.CLASSIFICATION_DIVERGENCE, D.DECISION_ALERT),
        (0.75, 0.5, D.CLASSIFICATION_FAST_ONLY, D.DECISION_DROP),
        (0.3, 0.55, D.CLASSIFICATION_ML_ONLY, D.DECISION_ALERT),
        (0.0, 0.72, D.CLASSIFICATION_DIVERGENCE, D.DECISION_DROP),
    ],
)
def test_classification_and_decision(fast: float, ml: float, cls: int, decision: int) -> None:
    s, i = one(fast, {"traffic": ml})
    assert s.classification[i] == cls
    assert s.decision[i] == decision


@pytest.mark.unit
def test_max_threat_wins_and_attack_type() -> None:
    s, i = one(0.0, {"ddos": 0.2, "internal": 0.93, "traffic": 0.4})
    assert s.ml[i] == pytest.approx(0.93)
    assert s.final[i] == pytest.approx(0.93)
    assert s.winner[i] == "internal"
    assert s.rag_required[i]  # final >= 0.85
    s, i = one(0.75, {"ddos": 0.2}, ["port_scan"])
    assert s.winner[i] == "port_scan"  # the fast detector won: its rule names the behaviour
    s, i = one(0.0, {"ddos": 0.2})
    assert s.winner[i] == ""


@pytest.mark.unit
def test_boundaries_are_as_documented() -> None:
    s, i = one(0.0, {"m": 0.70})
    assert s.decision[i] == D.DECISION_DROP  # final >= drop
    s, i = one(0.40, {"m": 0.70})
    assert not s.rag_required[i]  # divergence exactly 0.30 is not > 0.30 ...
    assert s.kept[i]  # ... but >= 0.30 keeps the event
    s, i = one(0.0, {"m": 0.10})
    assert not s.kept[i]


@pytest.mark.unit
def test_thresholds_come_from_settings() -> None:
    strict = ThresholdSettings(drop=0.95, alert=0.9, rag_final=0.99)
    s, i = one(0.0, {"m": 0.92}, th=strict)
    assert s.decision[i] == D.DECISION_ALERT
    with pytest.raises(ValueError, match="alert"):
        ThresholdSettings(drop=0.5, alert=0.6)
    with pytest.raises(ValueError, match="at least one model"):
        DetectorSettings.model_validate({"models": {"ddos": {"path": "ddos/model.txt", "enabled": False}}})


@pytest.mark.unit
@given(
    fast=st.lists(st.floats(0, 1), min_size=1, max_size=50),
    seed=st.integers(0, 1000),
)
def test_invariants(fast: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = np.array(fast)
    ml = {m: rng.random(len(f)) for m in ("ddos", "ransomware", "traffic", "internal")}
    s = score(f, ml, [[] for _ in f], TH)
    top = np.max(np.vstack(list(ml.values())), axis=0)
    assert np.allclose(s.final, np.maximum(f, top))
    assert np.allclose(s.divergence, np.abs(f - top))
    assert np.all((s.decision == D.DECISION_DROP) == (s.final >= TH.drop))
    assert np.all(s.rag_required == ((s.divergence > TH.divergence) | (s.final >= TH.rag_final)))
    assert np.all(s.kept[s.decision == D.DECISION_DROP])
