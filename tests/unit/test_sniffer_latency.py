"""Detection latency of live capture: half-open timeout, TCP close linger 0, and the fast detector
fed on an injected clock (the way the AF_PACKET and realtime pcap paths call `expire`)."""

from __future__ import annotations

from typing import Any

import pytest

from ml_defender.v1 import flow_pb2
from services.sniffer.config import SnifferSettings, is_hot
from services.sniffer.fast_detector import FastDetector
from services.sniffer.flows import FlowTable
from services.sniffer.testing import ether, icmp, ipv4, tcp, udp

pytestmark = pytest.mark.unit
S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
LIVE = {"half_open_timeout_s": 0.5, "tcp_close_linger_s": 0}


def settings_with(**flows: Any) -> SnifferSettings:
    return SnifferSettings.model_validate({"node_id": "test", "flows": flows})


def syn(dport: int, sport: int = 40000) -> bytes:
    return ether(ipv4("198.18.0.66", "198.18.1.10", 6, tcp(sport, dport, "S")))


def run_clock(
    table: FlowTable, packets: list[tuple[int, bytes]], tick_ns: int, until_ns: int
) -> list[tuple[int, flow_pb2.FlowRecord]]:
    """Feed packets as a live source would: each clock tick takes the packets that arrived and
    calls expire(now). Returns (export time, record) pairs."""
    out: list[tuple[int, flow_pb2.FlowRecord]] = []
    i = 0
    now = packets[0][0]
    while now <= until_ns:
        j = i
        while j < len(packets) and packets[j][0] <= now:
            j += 1
        if j > i:
            table.add_frames([t for t, _ in packets[i:j]], [f for _, f in packets[i:j]])
            i = j
        out += [(now, r) for r in table.expire(now)]
        now += tick_ns
    return out


def test_unanswered_syn_scan_exported_within_half_open_and_fast_detector_fires_within_1s() -> None:
    """30 SYNs to filtered ports, 5 ms apart: each probe leaves within 0.5 s + one 50 ms tick,
    and the fast detector (scoring records as they leave) fires port_scan < 1 s after the start."""
    probes = [(T0 + i * 5 * MS, syn(1000 + i)) for i in range(30)]
    table = FlowTable(settings_with(**LIVE))
    exported = run_clock(table, probes, tick_ns=50 * MS, until_ns=T0 + 2 * S)
    assert len(exported) == 30
    for when, rec in exported:
        assert rec.end_reason == flow_pb2.END_REASON_IDLE
        assert rec.features.bidirectional_packets == 1
        assert 500 * MS < when - rec.first_seen_ns <= 550 * MS
    det = FastDetector()
    fired_at = None
    for when, rec in exported:
        (res,) = det.observe([rec])
        if "port_scan" in res.rules and fired_at is None:
            fired_at = when
    assert fired_at is not None and fired_at - T0 < 1 * S


def test_default_settings_keep_unanswered_flows_until_idle_timeout() -> None:
    """half_open_timeout_s = 0 (default): the NFStream behaviour, nothing leaves before 120 s."""
    table = FlowTable(settings_with())
    table.add_frames([T0], [syn(22)])
    assert table.expire(T0 + 60 * S) == []
    (rec,) = table.expire(T0 + 121 * S)
    assert rec.end_reason == flow_pb2.END_REASON_IDLE


def test_half_open_applies_only_until_the_responder_answers() -> None:
    """An answered flow keeps the idle timeout; a retransmitted SYN after the half-open timeout is
    a new attempt; UDP and ICMP probes follow the same rule."""
    cfg = settings_with(**LIVE)
    c2s = ether(ipv4("198.18.0.1", "198.18.0.2", 6, tcp(40000, 80, "S")))
    s2c = ether(ipv4("198.18.0.2", "198.18.0.1", 6, tcp(80, 40000, "SA")))
    ack = ether(ipv4("198.18.0.1", "198.18.0.2", 6, tcp(40000, 80, "A")))
    table = FlowTable(cfg)
    table.add_frames([T0, T0 + MS, T0 + 2 * MS], [c2s, s2c, ack])
    assert table.expire(T0 + 10 * S) == []  # answered: the 120 s idle timeout applies
    table = FlowTable(cfg)
    table.add_frames([T0, T0 + 400 * MS, T0 + 1400 * MS], [c2s, c2s, c2s])
    recs = table.expire(T0 + 1400 * MS)
    assert [r.features.bidirectional_packets for r in recs] == [2]  # 0.4 s gap: same attempt
    (last,) = table.expire(T0 + 1901 * MS)
    assert last.first_seen_ns == T0 + 1400 * MS
    probe_udp = ether(ipv4("198.18.0.1", "198.18.0.2", 17, udp(5000, 53)))
    probe_icmp = ether(ipv4("198.18.0.1", "198.18.0.3", 1, icmp(8)))
    table = FlowTable(cfg)
    table.add_frames([T0, T0], [probe_udp, probe_icmp])
    assert table.expire(T0 + 500 * MS) == []  # strictly after the timeout
    assert len(table.expire(T0 + 501 * MS)) == 2


def test_late_answer_after_half_open_starts_a_new_flow() -> None:
    """The documented cost: a reply slower than the half-open timeout opens a flow of its own
    (initiator = the replier), exactly as a packet after the idle timeout does."""
    c2s = ether(ipv4("198.18.0.1", "198.18.0.2", 17, udp(5000, 53)))
    s2c = ether(ipv4("198.18.0.2", "198.18.0.1", 17, udp(53, 5000)))
    table = FlowTable(settings_with(**LIVE))
    table.add_frames([T0, T0 + 600 * MS], [c2s, s2c])
    recs = table.flush()
    assert [(r.key.src_port, r.features.bidirectional_packets) for r in recs] == [(5000, 1), (53, 1)]
    assert recs[0].end_reason == flow_pb2.END_REASON_IDLE


def test_linger_zero_exports_rejected_and_closed_flows_at_once() -> None:
    """RST back: exported by the first expire after the RST; a stray packet in the same ns stays in
    the flow, one later starts a new flow (existing rules, linger 0). FIN both ways: the same."""
    c2s = ether(ipv4("198.18.0.1", "198.18.0.2", 6, tcp(40000, 81, "S")))
    rst = ether(ipv4("198.18.0.2", "198.18.0.1", 6, tcp(81, 40000, "RA")))
    table = FlowTable(settings_with(**LIVE))
    table.add_frames([T0, T0 + MS, T0 + MS], [c2s, rst, rst])
    assert table.expire(T0 + MS) == []
    (rec,) = table.expire(T0 + MS + 1)
    assert rec.end_reason == flow_pb2.END_REASON_RST and rec.features.bidirectional_packets == 3
    det = FastDetector()
    assert det.observe([rec])[0].score == 0  # one rejected attempt alone fires nothing

    table = FlowTable(settings_with(**LIVE))
    table.add_frames([T0, T0 + MS, T0 + 2 * MS], [c2s, rst, rst])
    recs = table.expire(T0 + 2 * MS + 1)
    assert [(r.end_reason, r.features.bidirectional_packets) for r in recs] == [
        (flow_pb2.END_REASON_RST, 2),
        (flow_pb2.END_REASON_RST, 1),
    ]

    fin_c = ether(ipv4("198.18.0.1", "198.18.0.2", 6, tcp(40001, 80, "FA")))
    fin_s = ether(ipv4("198.18.0.2", "198.18.0.1", 6, tcp(80, 40001, "FA")))
    table = FlowTable(settings_with(**LIVE))
    table.add_frames([T0, T0 + MS], [fin_c, fin_s])
    (rec,) = table.expire(T0 + MS + 1)
    assert rec.end_reason == flow_pb2.END_REASON_FIN


def test_export_window_scores_a_long_flood_while_it_lasts() -> None:
    """A ping flood answered by the victim (one ICMP flow, never half-open) over 3.5 s with a 1 s
    export window: WINDOW records every ~1 s, disjoint (packet counts add up to what was sent),
    each continuation an echo flow again, so a sweep rule counts the same host only once."""
    req = ether(ipv4("198.18.0.66", "198.18.1.10", 1, icmp(8)))
    rep = ether(ipv4("198.18.1.10", "198.18.0.66", 1, icmp(0)))
    packets: list[tuple[int, bytes]] = []
    for i in range(35):
        packets += [(T0 + i * 100 * MS, req), (T0 + i * 100 * MS + MS, rep)]
    cfg = settings_with(export_active_interval_s=1.0)
    exported = run_clock(FlowTable(cfg), packets, tick_ns=50 * MS, until_ns=T0 + 3500 * MS)
    assert [r.end_reason for _, r in exported] == [flow_pb2.END_REASON_WINDOW] * 3
    for when, rec in exported:
        assert when - rec.first_seen_ns <= 1100 * MS
    table = FlowTable(cfg)
    table.add_frames([t for t, _ in packets], [f for _, f in packets])
    recs = table.expire(packets[-1][0]) + table.flush()
    assert sum(r.features.bidirectional_packets for r in recs) == len(packets)
    det = FastDetector()
    det.observe(recs)
    assert sum(det.fired.values()) == 0
    assert settings_with().flows.active_reason() == flow_pb2.END_REASON_ACTIVE


def test_half_open_timeout_is_hot_and_validated() -> None:
    assert is_hot("flows.half_open_timeout_s")
    assert is_hot("flows.export_active_interval_s")
    with pytest.raises(ValueError):
        settings_with(half_open_timeout_s=-1)
    with pytest.raises(ValueError):
        SnifferSettings.model_validate({"xdp": {"ringbuf_kib": 3000}})


class _XdpStats:
    """Stands in for XdpSource: only stats() is read by the metrics update."""

    name = "xdp"

    def __init__(self) -> None:
        self.st: dict[str, int] = {}

    def stats(self) -> dict[str, int]:
        return dict(self.st)


def test_xdp_loss_and_fill_become_metrics() -> None:
    """ringbuf_full / lost_packets / notice_lost are counted by delta, map fill is a gauge."""
    from prometheus_client import REGISTRY

    from services.sniffer.app import SnifferApp

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    names = (
        "mld_sniffer_xdp_ringbuf_full_total",
        "mld_sniffer_xdp_lost_packets_total",
        "mld_sniffer_xdp_notices_lost_total",
    )
    before = {n: value(n) for n in names}
    app = SnifferApp(settings_with())
    src = _XdpStats()
    src.st = {"map_fill_permille": 250, "ringbuf_full": 2, "lost_packets": 7, "notice_lost": 1}
    app._update_metrics(src)  # type: ignore[arg-type]
    src.st = {"map_fill_permille": 900, "ringbuf_full": 3, "lost_packets": 9, "notice_lost": 1}
    app._update_metrics(src)  # type: ignore[arg-type]
    got = {n: value(n) - before[n] for n in names}
    assert got == dict(zip(names, (3.0, 9.0, 1.0), strict=True))
    assert value("mld_sniffer_xdp_map_fill_permille") == 900


# --- tombstones: late packets of a just-closed connection (linger 0) ------------------------

TOMB = {"tcp_close_linger_s": 0, "half_open_timeout_s": 0.1, "tombstone_ttl_s": 3.0}


def conn(sport: int = 40000, flags: str = "") -> tuple[bytes, bytes]:
    """(client -> server, server -> client) frames of one connection with the given flags."""
    return (
        ether(ipv4("198.18.0.20", "198.18.0.10", 6, tcp(sport, 80, flags))),
        ether(ipv4("198.18.0.10", "198.18.0.20", 6, tcp(80, sport, flags))),
    )


def fin_exchange(t0: int, sport: int = 40000) -> list[tuple[int, bytes]]:
    """A whole HTTP-like connection whose last packet (the client's ACK of the server's FIN)
    comes after FIN both ways, as on the wire."""
    return [
        (t0, conn(sport, "S")[0]),
        (t0 + 1 * MS, conn(sport, "SA")[1]),
        (t0 + 2 * MS, conn(sport, "A")[0]),
        (t0 + 3 * MS, conn(sport, "PA")[0]),
        (t0 + 4 * MS, conn(sport, "PA")[1]),
        (t0 + 5 * MS, conn(sport, "FA")[1]),
        (t0 + 6 * MS, conn(sport, "FA")[0]),
        (t0 + 7 * MS, conn(sport, "A")[1]),  # after the close: linger 0 has already ended the flow
    ]


@pytest.mark.parametrize("tick_ms", [1, 50])
def test_tombstone_absorbs_the_ack_that_ends_a_fin_exchange(tick_ms: int) -> None:
    """Without tombstones the closing ACK becomes a one-packet flow of its own; with them it is
    absorbed and counted, whatever the export tick, and the closed flow leaves at once."""
    packets = fin_exchange(T0)
    bare = run_clock(FlowTable(settings_with(tcp_close_linger_s=0, half_open_timeout_s=0.1)), packets,
                     tick_ms * MS, T0 + S)  # fmt: skip
    assert [r.features.bidirectional_packets for _, r in bare] == [7, 1]
    table = FlowTable(settings_with(**TOMB))
    out = run_clock(table, packets, tick_ms * MS, T0 + S)
    assert [(r.end_reason, r.features.bidirectional_packets) for _, r in out] == [
        (flow_pb2.END_REASON_FIN, 7)
    ]
    assert out[0][0] - (T0 + 6 * MS) <= tick_ms * MS  # exported by the first expire after the close
    c = table.counters
    assert (c.late_flows_absorbed, c.late_packets_absorbed) == (1, 1)
    assert c.flows_exported == 1 and c.exported_by_reason == {"FIN": 1}
    assert table.flush() == [] and len(table) == 0


def test_tombstone_keeps_new_connections_and_anything_that_is_not_a_remnant() -> None:
    """A SYN on the same key within the TTL is a new connection; a packet after the TTL, or a
    burst longer than a close's remnant, is traffic of its own; retransmitted RSTs are absorbed."""
    syn_c, _ = conn(40000, "S")
    ack_c, _ = conn(40000, "A")
    _, rst_s = conn(40001, "R")
    rst_c, _ = conn(40001, "R")
    packets = [
        *fin_exchange(T0),
        (T0 + 300 * MS, syn_c),  # a new connection reusing the key: kept (unanswered: half-open)
        # RST, then the same RST twice more: one flow, then two late remnants
        (T0 + 30 * MS, rst_c),
        (T0 + 40 * MS, rst_s),
        (T0 + 50 * MS, rst_s),
        (T0 + 5 * S, rst_s),  # after the TTL: a flow of its own
    ]
    table = FlowTable(settings_with(**TOMB))
    out = [r for _, r in run_clock(table, packets, 10 * MS, T0 + 6 * S)]
    got = [
        (r.key.src_port, r.features.bidirectional_packets, r.features.bidirectional_syn_packets) for r in out
    ]
    assert got == [(40000, 7, 2), (40001, 1, 0), (40000, 1, 1), (80, 1, 0)]
    assert table.counters.late_packets_absorbed == 3  # closing ACK + two retransmitted RSTs
    noisy = [(T0 + i * MS, ack_c) for i in range(20, 26)]  # six packets: more than a remnant
    table = FlowTable(settings_with(**TOMB))
    out = [r for _, r in run_clock(table, [*fin_exchange(T0)[:-1], *noisy], 10 * MS, T0 + S)]
    assert [r.features.bidirectional_packets for r in out] == [7, 6]


def test_tombstones_are_bounded_and_follow_hot_settings() -> None:
    from services.sniffer.flows import Tombstones

    packets = [p for i in range(40) for p in fin_exchange(T0 + i * 10 * MS, sport=41000 + i)[:-1]]
    table = FlowTable(settings_with(**TOMB, tombstone_max_keys=16))
    assert len(run_clock(table, packets, 10 * MS, T0 + S)) == 40
    assert len(table.tombstones) == 16
    table.update_settings(settings_with(**{**TOMB, "tombstone_ttl_s": 0}).flows)
    assert len(table.tombstones) == 0
    assert is_hot("flows.tombstone_ttl_s") and is_hot("flows.tombstone_max_keys")
    # off (the default): records pass through untouched
    t = Tombstones(settings_with().flows)
    recs = run_clock(FlowTable(settings_with(tcp_close_linger_s=0)), fin_exchange(T0), MS, T0 + 200 * S)
    assert t.filter([r for _, r in recs]) == [r for _, r in recs] and len(recs) == 2


def test_xdp_source_wakes_when_a_partial_batch_is_due() -> None:
    """After yielding records the XDP loop polls at most `export_interval_ms` before yielding again,
    so the service sends a partial batch on time even when no further notice arrives (it used to
    sleep up to 100 ms: a second flow closed 2 ms after a sent one waited that long)."""
    from libs.common.lifecycle import StopFlag
    from services.sniffer.sources.xdp import XdpCounters, XdpSource

    cfg = settings_with(export_interval_ms=10)
    src = object.__new__(XdpSource)  # the loop only: no program, no map
    src.settings = SnifferSettings.model_validate(
        {**cfg.model_dump(mode="json"), "xdp": {"sweep_interval_ms": 60_000}}
    )
    src.counts = XdpCounters()
    src._pending, src._ended, src._checks, src._check_at = [], [], [], {}
    polls: list[int] = []

    class Ring:
        def poll(self, timeout_ms: int) -> None:
            polls.append(timeout_ms)
            if len(polls) == 1:  # an END notice arrived: one record is ready
                src._pending.append(flow_pb2.FlowRecord())

    src._rb = Ring()  # type: ignore[assignment]
    stop = StopFlag()
    got = []
    for batch in src.batches(stop):
        got.append(len(batch))
        if len(polls) == 3:
            stop.set()
            break
    assert got[:2] == [1, 0]
    assert polls[0] == 100 and polls[1] <= 10, polls  # idle, then woken for the due partial batch
