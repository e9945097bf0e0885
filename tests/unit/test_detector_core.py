"""The detector core (records -> DetectionEvents) on real flows of a public capture."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.events import event_to_dict, uuid7_time_ns
from ml_defender.v1 import detection_pb2, flow_pb2
from services.ml_detector.config import DetectorSettings
from services.ml_detector.detector import Detector
from services.ml_detector.models import load_model_set

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings() -> DetectorSettings:
    return DetectorSettings(models_dir=str(REPO / "models"))


def ssh_records(shared: Path) -> list[flow_pb2.FlowRecord]:
    from services.sniffer.flows import extract_flows

    return list(extract_flows([shared / "attack-ssh-bruteforce.pcap"]).records)


@pytest.mark.unit
def test_events_carry_the_envelope_and_explanations(settings: DetectorSettings, shared_pcaps: Path) -> None:
    recs = ssh_records(shared_pcaps)
    fast = [flow_pb2.FastResult(score=0.75, rules=["ssh_rule"])] + [flow_pb2.FastResult()] * (len(recs) - 1)
    det = Detector(settings, load_model_set(settings), revision=7)
    res = det.score(recs, fast)
    assert len(res.events) == len(recs)
    ids = [e.event_id for e in res.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # UUIDv7, time-ordered
    for ev, rec in zip(res.events, recs, strict=True):
        assert ev.flow == rec and ev.config_revision == 7
        assert set(ev.ml_scores) == {"ddos", "ransomware", "traffic", "internal"}
        assert ev.ml_score == max(ev.ml_scores.values())
        assert ev.final_score == max(ev.fast_score, ev.ml_score)
        assert ev.thresholds.drop == 0.70 and ev.timestamps.scored_ns >= uuid7_time_ns(ev.event_id)
        assert len(ev.model_versions) == 4
        kept = ev.rag_required or ev.final_score >= 0.7 or ev.divergence >= 0.3
        assert bool(ev.explanation) == kept
        if ev.explanation:
            doc = event_to_dict(ev)["explanation"]
            assert len(doc) == 5 and doc[0]["model"] == max(ev.ml_scores, key=lambda k: ev.ml_scores[k])
    assert res.events[0].rules == ["ssh_rule"]
    assert res.events[-1].decision == detection_pb2.DECISION_DROP  # repeated guessing from one source


@pytest.mark.unit
def test_explanation_budget_counts_the_rest(settings: DetectorSettings, shared_pcaps: Path) -> None:
    recs = ssh_records(shared_pcaps)
    tight = settings.model_copy(update={"explain": settings.explain.model_copy(update={"max_per_batch": 2})})
    res = Detector(tight, load_model_set(tight)).score(recs)
    explained = sum(1 for e in res.events if e.explanation)
    assert explained == 2
    assert res.unexplained == int(res.scores.kept.sum()) - 2 > 0


@pytest.mark.unit
def test_swap_changes_thresholds_for_the_next_batch(settings: DetectorSettings, shared_pcaps: Path) -> None:
    recs = ssh_records(shared_pcaps)
    det = Detector(settings, load_model_set(settings))
    strict = settings.model_copy(
        update={
            "thresholds": settings.thresholds.model_copy(update={"drop": 1.0, "alert": 1.0, "rag_final": 1.0})
        }
    )
    det.swap(strict, det.state.models, revision=9)
    res = det.score(recs)
    assert all(e.decision == detection_pb2.DECISION_ALLOW and e.config_revision == 9 for e in res.events)


@pytest.mark.unit
def test_explanations_can_follow_the_decisions(settings: DetectorSettings, shared_pcaps: Path) -> None:
    """explain=False gives the decisions without TreeSHAP (what the firewall gets first); explain()
    then adds exactly the explanations a one-step score gives (what the rag-logger gets)."""
    recs = ssh_records(shared_pcaps)
    models = load_model_set(settings)
    whole = Detector(settings, models).score(recs)
    det = Detector(settings, models)
    first = det.score(recs, explain=False)
    assert [e.decision for e in first.events] == [e.decision for e in whole.events]
    assert not any(e.explanation for e in first.events) and first.deferred is not None
    assert det.explain(first) == whole.unexplained
    assert [list(e.explanation) for e in first.events] == [list(e.explanation) for e in whole.events]
    assert any(e.explanation for e in first.events)
