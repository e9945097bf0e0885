"""The event envelope: ids, Community ID, enum names and the one JSON form."""

from __future__ import annotations

import json
import re

import pytest

from libs.common import events
from ml_defender.v1 import detection_pb2, flow_pb2

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("src", "dst", "sport", "dport", "proto", "expected"),
    [
        # Vectors from the Community ID specification's baseline (corelight/community-id-spec).
        ("128.232.110.120", "66.35.250.204", 34855, 80, 6, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
        ("66.35.250.204", "128.232.110.120", 80, 34855, 6, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
        ("192.168.1.52", "8.8.8.8", 54585, 53, 17, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
        ("192.168.0.89", "192.168.0.1", 8, 0, 1, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
        ("192.168.0.1", "192.168.0.89", 0, 0, 1, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
        (
            "fe80::200:86ff:fe05:80da",
            "fe80::260:97ff:fe07:69ea",
            135,
            0,
            58,
            "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
        ),
    ],
)
def test_community_id_matches_spec_vectors(
    src: str, dst: str, sport: int, dport: int, proto: int, expected: str
) -> None:
    got = events.community_id(events.ip_bytes(src), events.ip_bytes(dst), sport, dport, proto)
    assert got == expected


def test_uuid7_is_time_ordered_and_well_formed() -> None:
    ids = [events.uuid7() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids
    )
    ns = 1_700_000_000_123_000_000
    assert events.uuid7_time_ns(events.uuid7(ns)) // 1_000_000 >= ns // 1_000_000


def test_enum_names_round_trip() -> None:
    for enum in (
        detection_pb2.Decision,
        detection_pb2.Classification,
        detection_pb2.Verdict,
        flow_pb2.EndReason,
    ):
        for value in enum.values():
            assert events.enum_value(enum, events.enum_name(enum, value)) == value
    assert events.enum_name(detection_pb2.Decision, detection_pb2.DECISION_DROP) == "DROP"
    assert (
        events.enum_name(detection_pb2.Classification, detection_pb2.CLASSIFICATION_FAST_ONLY) == "FAST_ONLY"
    )
    with pytest.raises(ValueError):
        events.enum_value(detection_pb2.Decision, "EXPLODE")


def test_feature_names_follow_the_grammar() -> None:
    stats = [
        "packets",
        "bytes",
        "duration_ms",
        "min_ps",
        "mean_ps",
        "stddev_ps",
        "max_ps",
        "min_piat_ms",
        "mean_piat_ms",
        "stddev_piat_ms",
        "max_piat_ms",
        "syn_packets",
        "ack_packets",
        "psh_packets",
        "rst_packets",
        "fin_packets",
        "urg_packets",
    ]
    expected = {f"{d}_{s}" for d in ("src2dst", "dst2src", "bidirectional") for s in stats} | {
        "dst_port",
        "protocol",
    }
    assert set(events.FEATURE_NAMES) == expected
    assert len(events.FEATURE_NAMES) == 53


def _event() -> detection_pb2.DetectionEvent:
    ev = detection_pb2.DetectionEvent(
        event_id=events.uuid7(), fast_score=0.75, ml_score=0.2, final_score=0.75
    )
    ev.divergence = 0.55
    ev.flow.key.src_addr = events.ip_bytes("198.18.0.5")
    ev.flow.key.dst_addr = events.ip_bytes("198.18.0.9")
    ev.flow.key.src_port, ev.flow.key.dst_port, ev.flow.key.protocol = 40000, 445, 6
    ev.flow.last_seen_ns = 1_764_072_000_000_000_000
    ev.flow.features.src2dst_packets = 3
    ev.ml_scores["ddos"] = 0.2
    ev.rules.append("smb_connections")
    ev.classification = detection_pb2.CLASSIFICATION_DIVERGENCE
    ev.decision = detection_pb2.DECISION_DROP
    ev.verdict = detection_pb2.VERDICT_MALICIOUS
    return ev


def test_event_json_has_the_contract_fields() -> None:
    doc = events.event_to_dict(_event())
    for key in (
        "event_id",
        "timestamp",
        "src_ip",
        "dst_ip",
        "src_port",
        "dst_port",
        "protocol",
        "community_id",
        "fast_score",
        "ml_score",
        "ml_scores",
        "final_score",
        "divergence",
        "classification",
        "verdict",
        "decision",
        "attack_type",
        "rules",
        "features",
    ):
        assert key in doc, key
    assert doc["src_ip"] == "198.18.0.5" and doc["dst_port"] == 445 and doc["protocol"] == "tcp"
    assert doc["decision"] == "DROP" and doc["classification"] == "DIVERGENCE"
    assert doc["timestamp"] == "2025-11-25T12:00:00.000000Z"
    assert doc["features"]["src2dst_packets"] == 3 and len(doc["features"]) == 53
    json.dumps(doc)  # serialisable as is


def test_ipv6_text() -> None:
    assert events.ip_text(events.ip_bytes("2001:db8::1")) == "2001:db8::1"
    assert events.ip_text(b"") == ""
