"""Synthetic DetectionEvents of realistic size, for the rag-logger's tests and benchmark."""

from __future__ import annotations

import random

from libs.common.events import FEATURE_NAMES, community_id, uuid7
from ml_defender.v1 import config_pb2, detection_pb2

_MODELS = ("ddos", "ransomware", "traffic", "internal")


def make_event(
    ts_ns: int, rng: random.Random, event_id: str | None = None, score: float | None = None
) -> detection_pb2.DetectionEvent:
    """One scored event at `ts_ns` (its flow's last_seen_ns) with all features set; score 0.9 unless given."""
    ev = detection_pb2.DetectionEvent()
    ev.event_id = event_id or uuid7(ts_ns)
    f = ev.flow
    f.flow_id = rng.getrandbits(63)
    src = bytes([198, 18, rng.randrange(256), rng.randrange(1, 255)])
    dst = bytes([198, 19, rng.randrange(256), rng.randrange(1, 255)])
    sport, dport = rng.randrange(1024, 65536), rng.choice((22, 80, 443, 445, 3389))
    f.key.src_addr, f.key.dst_addr = src, dst
    f.key.src_port, f.key.dst_port, f.key.protocol = sport, dport, 6
    f.community_id = community_id(src, dst, sport, dport, 6)
    f.first_seen_ns = ts_ns - rng.randrange(1, 5_000_000_000)
    f.last_seen_ns = ts_ns
    f.end_reason = 3
    f.node_id = "bench-node"
    f.interface = "veth0"
    for name in FEATURE_NAMES:
        kind = type(getattr(f.features, name))
        setattr(f.features, name, kind(rng.randrange(1, 5000)))
    s = 0.9 if score is None else score
    ev.fast_score = 0.75
    for model in _MODELS:
        ev.ml_scores[model] = round(rng.random() * s, 4)
    ev.ml_scores["ddos"] = s
    ev.ml_score = s
    ev.final_score = max(s, ev.fast_score if score is None else 0.0)
    ev.divergence = abs(ev.fast_score - ev.ml_score) if score is None else 0.0
    ev.classification = detection_pb2.CLASSIFICATION_CONSENSUS
    ev.verdict = detection_pb2.VERDICT_MALICIOUS
    ev.decision = detection_pb2.DECISION_DROP
    ev.attack_type = "portscan"
    ev.rag_required = score is None
    ev.rules.extend(["distinct_ports"])
    for i in range(5):
        c = ev.explanation.add()
        c.feature, c.value, c.contribution, c.model = FEATURE_NAMES[i], float(i), 0.1 * i, "ddos"
    ev.model_versions.update({m: "1.0.0" for m in _MODELS})
    ev.config_revision = 7
    ev.thresholds.drop, ev.thresholds.alert, ev.thresholds.divergence = 0.7, 0.5, 0.3
    ev.thresholds.rag_final, ev.thresholds.consensus_ml = 0.85, 0.5
    ev.timestamps.captured_ns = ts_ns
    ev.timestamps.exported_ns = ts_ns + 1000
    ev.timestamps.scored_ns = ts_ns + 2000
    ev.node_id = "bench-node"
    return ev


def make_config_change(ts_ns: int, change_id: str | None = None) -> config_pb2.ConfigChange:
    change = config_pb2.ConfigChange(
        service="ml-detector",
        node="bench-node",
        old_revision=6,
        new_revision=7,
        result=config_pb2.CONFIG_RESULT_APPLIED,
        timestamp_ns=ts_ns,
        change_id=change_id or uuid7(ts_ns),
    )
    d = change.diff.add()
    d.path, d.old_json, d.new_json, d.hot = "thresholds.drop", "0.7", "0.65", True
    return change
