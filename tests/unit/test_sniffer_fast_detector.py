"""Fast detector rules on synthetic flow records: scans fire, answered traffic does not."""

from __future__ import annotations

import ipaddress

import pytest

from ml_defender.v1 import flow_pb2
from services.sniffer.config import FastDetectorSettings
from services.sniffer.fast_detector import FastDetector, classify

pytestmark = pytest.mark.unit
S = 1_000_000_000
T0 = 1_700_000_000 * S


def rec(
    src: str,
    dst: str,
    dport: int,
    t: int,
    *,
    proto: int = 6,
    answered: bool = False,
    rst_back: bool = False,
    completed: bool | None = None,
    sport: int = 40000,
) -> flow_pb2.FlowRecord:
    f = flow_pb2.FlowFeatures(protocol=proto, dst_port=dport)
    if proto == 6:
        f.src2dst_syn_packets = 1
        f.src2dst_packets = 1
        if answered:
            f.dst2src_syn_packets = 1
            f.dst2src_packets = 1
        if rst_back:
            f.dst2src_rst_packets = 1
            f.dst2src_packets += 1
        if completed if completed is not None else answered:
            f.src2dst_ack_packets = 1
    else:
        f.src2dst_packets = 1
        f.dst2src_packets = 1 if answered else 0
    return flow_pb2.FlowRecord(
        key=flow_pb2.FlowKey(
            src_addr=ipaddress.ip_address(src).packed,
            dst_addr=ipaddress.ip_address(dst).packed,
            src_port=sport,
            dst_port=dport,
            protocol=proto,
        ),
        first_seen_ns=t,
        last_seen_ns=t,
        features=f,
    )


def rules_of(results: list[flow_pb2.FastResult]) -> set[str]:
    return {r for res in results for r in res.rules}


def test_many_answered_connections_do_not_fire() -> None:
    """The ESPN page-load pattern: 25 answered connections to 13 servers in 2 s."""
    recs = [rec("172.16.0.122", f"93.184.0.{i % 13}", 80, T0 + i * S // 12, answered=True) for i in range(25)]
    out = FastDetector().observe(recs)
    assert rules_of(out) == set() and all(r.score == 0 for r in out)


def test_unanswered_attempts_to_many_ports_fire_port_scan() -> None:
    recs = [rec("172.16.0.8", "64.13.134.52", 1000 + i, T0 + i * S // 10) for i in range(12)]
    out = FastDetector().observe(recs)
    assert "port_scan" not in out[9].rules  # 10 ports: at the bound, not above it
    assert "port_scan" in out[10].rules and out[10].score == pytest.approx(0.75)
    assert len(out) == len(recs)


def test_many_destinations_and_window_sliding() -> None:
    det = FastDetector(FastDetectorSettings(window_s=10))
    slow = [rec("10.1.1.1", f"10.2.0.{i}", 22, T0 + i * 2 * S) for i in range(12)]  # one per 2 s
    assert "many_destinations" not in rules_of(det.observe(slow))
    fast = [rec("10.1.1.9", f"10.2.0.{i}", 22, T0 + i * S // 100) for i in range(12)]
    assert "many_destinations" in rules_of(det.observe(fast))


def test_icmp_sweep() -> None:
    recs = [rec("10.0.0.128", f"10.0.0.{i}", 0, T0 + i, proto=1, sport=8) for i in range(12)]
    out = FastDetector().observe(recs)
    assert {"icmp_sweep", "many_destinations"} <= rules_of(out)
    replies = [rec("10.0.0.3", "10.0.0.128", 0, T0 + i, proto=1, sport=3) for i in range(50)]
    assert rules_of(FastDetector().observe(replies)) == set()


def test_smb_failed_attempts() -> None:
    recs = [rec("10.0.0.50", f"10.0.9.{i}", 445, T0 + i) for i in range(4)]
    assert "smb_scan" in rules_of(FastDetector().observe(recs))
    answered = [rec("10.0.0.50", "10.0.9.1", 445, T0 + i, answered=True) for i in range(6)]
    assert "smb_scan" not in rules_of(FastDetector().observe(answered))


def test_rst_ratio_needs_enough_connections() -> None:
    few = [rec("10.0.0.7", "10.0.0.8", 80, T0 + i, rst_back=True) for i in range(5)]
    assert "rst_ratio" not in rules_of(FastDetector().observe(few))
    mixed = [
        rec("10.0.0.7", "10.0.0.8", 80, T0 + i, rst_back=i % 3 == 0, answered=i % 3 != 0) for i in range(12)
    ]
    assert "rst_ratio" in rules_of(FastDetector().observe(mixed))


def test_syn_flood_half_open_to_one_host() -> None:
    det = FastDetector(FastDetectorSettings(syn_flood_min_half_open=50))
    recs = [
        rec("203.0.113.9", "10.0.0.80", 80, T0 + i * 1000, answered=True, completed=False, sport=1024 + i)
        for i in range(60)
    ]
    assert "syn_flood" in rules_of(det.observe(recs))


def test_state_is_bounded_lru() -> None:
    det = FastDetector(FastDetectorSettings(max_sources=3, max_events_per_source=16))
    for i in range(10):
        det.observe([rec(f"10.3.0.{i}", "10.4.0.1", 80 + j, T0 + j) for j in range(40)])
    assert len(det) == 3
    assert all(len(s.events) <= 16 for s in det._sources.values())


def test_update_settings_applies_live() -> None:
    det = FastDetector()
    recs = [rec("10.5.0.1", "10.5.0.2", 2000 + i, T0 + i) for i in range(6)]
    assert "port_scan" not in rules_of(det.observe(recs))
    det.update_settings(FastDetectorSettings(distinct_ports_threshold=3, score=0.9))
    out = det.observe([rec("10.5.0.1", "10.5.0.2", 3000, T0 + 10)])
    assert out[0].rules == ["port_scan"] and out[0].score == pytest.approx(0.9)
    det.update_settings(FastDetectorSettings(enabled=False))
    assert det.observe(recs)[0].score == 0


def test_classify_ignores_multicast_broadcast_and_midstream() -> None:
    assert classify(rec("10.0.0.1", "224.0.0.251", 5353, T0, proto=17), (445,)) is None
    assert classify(rec("10.0.0.1", "10.0.0.255", 137, T0, proto=17), (445,)) is None
    mid = rec("10.0.0.1", "10.0.0.2", 80, T0)
    mid.features.src2dst_syn_packets = 0
    assert classify(mid, (445,)) is None
    a = classify(rec("10.0.0.1", "10.0.0.2", 80, T0, rst_back=True), (445,))
    assert a is not None and a.failed and a.rejected
