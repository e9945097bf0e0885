"""Flow table: feature math, flow splitting rules, batch independence, bounds, capture files."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import community_id, features_dict, flow_dict, ip_text
from ml_defender.v1 import flow_pb2
from services.sniffer import flows as flows_mod
from services.sniffer import wire
from services.sniffer.config import SnifferSettings
from services.sniffer.flows import FlowTable, extract_flows
from services.sniffer.testing import ether, icmp, ipv4, ipv6, tcp, udp, write_pcap, write_pcapng

pytestmark = pytest.mark.unit
S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def settings_with(**flows: Any) -> SnifferSettings:
    return SnifferSettings.model_validate({"node_id": "test", "flows": flows})


def c2s(flags: str, payload: bytes = b"", sport: int = 40000) -> bytes:
    return ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(sport, 80, flags, payload)))


def s2c(flags: str, payload: bytes = b"", sport: int = 40000) -> bytes:
    return ether(ipv4("10.0.0.2", "10.0.0.1", 6, tcp(80, sport, flags, payload)))


def run_table(packets: list[tuple[int, bytes]], table: FlowTable | None = None) -> list[flow_pb2.FlowRecord]:
    table = table or FlowTable(settings_with())
    table.add_frames([t for t, _ in packets], [f for _, f in packets])
    out = table.expire(max(t for t, _ in packets))
    return out + table.flush()


def canon(records: list[flow_pb2.FlowRecord]) -> list[tuple[Any, ...]]:
    rows = []
    for r in records:
        d = flow_dict(r)
        d.update(
            {k: round(v, 6) if isinstance(v, float) else v for k, v in features_dict(r.features).items()}
        )
        rows.append(tuple(sorted(d.items())))
    return sorted(rows)


def test_handshake_features_by_hand() -> None:
    pkts = [
        (T0, c2s("S")),
        (T0 + 10 * MS, s2c("SA")),
        (T0 + 11 * MS, c2s("A")),
        (T0 + 20 * MS, c2s("PA", b"x" * 100)),
        (T0 + 50 * MS, s2c("PA", b"y" * 300)),
    ]
    (rec,) = run_table(pkts)
    f = rec.features
    assert ip_text(rec.key.src_addr) == "10.0.0.1" and rec.key.src_port == 40000 and rec.key.dst_port == 80
    assert rec.end_reason == flow_pb2.END_REASON_WINDOW
    assert (rec.first_seen_ns, rec.last_seen_ns) == (T0, T0 + 50 * MS)
    assert (f.src2dst_packets, f.dst2src_packets, f.bidirectional_packets) == (3, 2, 5)
    assert (f.src2dst_bytes, f.dst2src_bytes) == (40 + 40 + 140, 40 + 340)
    assert f.bidirectional_duration_ms == pytest.approx(50.0)
    assert f.src2dst_duration_ms == pytest.approx(20.0) and f.dst2src_duration_ms == pytest.approx(40.0)
    assert (f.bidirectional_min_ps, f.bidirectional_max_ps) == (40, 340)
    sizes = [40, 40, 40, 140, 340]
    assert f.bidirectional_mean_ps == pytest.approx(np.mean(sizes))
    assert f.bidirectional_stddev_ps == pytest.approx(np.std(sizes, ddof=1))
    assert f.bidirectional_min_piat_ms == pytest.approx(1.0) and f.bidirectional_max_piat_ms == pytest.approx(
        30.0
    )
    assert f.bidirectional_mean_piat_ms == pytest.approx(12.5)
    assert f.bidirectional_stddev_piat_ms == pytest.approx(np.std([10, 1, 9, 30], ddof=1))
    assert (f.src2dst_min_piat_ms, f.src2dst_max_piat_ms) == (pytest.approx(9.0), pytest.approx(11.0))
    assert f.dst2src_mean_piat_ms == pytest.approx(40.0) and f.dst2src_stddev_piat_ms == 0
    assert (f.src2dst_syn_packets, f.dst2src_syn_packets, f.bidirectional_ack_packets) == (1, 1, 4)
    assert (f.bidirectional_psh_packets, f.bidirectional_fin_packets, f.bidirectional_rst_packets) == (
        2,
        0,
        0,
    )
    assert (f.dst_port, f.protocol) == (80, 6)
    assert rec.community_id == community_id(rec.key.src_addr, rec.key.dst_addr, 40000, 80, 6)
    assert rec.node_id == "test"


def test_initiator_is_src_even_when_server_port_is_lower() -> None:
    (rec,) = run_table([(T0, s2c("S")), (T0 + MS, c2s("SA"))])
    assert ip_text(rec.key.src_addr) == "10.0.0.2" and rec.key.src_port == 80


def test_fin_both_ways_ends_flow_and_keeps_the_last_ack() -> None:
    pkts = [
        (T0, c2s("S")),
        (T0 + MS, s2c("SA")),
        (T0 + 2 * MS, c2s("FA")),
        (T0 + 3 * MS, s2c("FA")),
        (T0 + 4 * MS, c2s("A")),  # final ACK within the linger: same flow
        (T0 + 5 * MS, c2s("S")),  # port reuse: a new connection
        (T0 + 6 * MS, s2c("RA")),
        (T0 + 7 * MS, s2c("RA")),  # a second RST within the linger: same flow
        (T0 + 10 * S, c2s("A")),  # long after the close: a new (mid-stream) flow
    ]
    recs = run_table(pkts)
    assert [r.end_reason for r in recs] == [
        flow_pb2.END_REASON_FIN,
        flow_pb2.END_REASON_RST,
        flow_pb2.END_REASON_WINDOW,
    ]
    assert [r.features.bidirectional_packets for r in recs] == [5, 3, 1]


def test_idle_and_active_timeouts() -> None:
    u = ether(ipv4("10.0.0.1", "10.0.0.9", 17, udp(5000, 53)))
    recs = run_table([(T0, u), (T0 + 121 * S, u)])
    assert [r.end_reason for r in recs] == [flow_pb2.END_REASON_IDLE, flow_pb2.END_REASON_WINDOW]
    steady = [(T0 + i * 60 * S, u) for i in range(40)]  # one packet a minute for 39 minutes
    recs = run_table(steady)
    assert recs[0].end_reason == flow_pb2.END_REASON_ACTIVE
    assert recs[0].last_seen_ns - recs[0].first_seen_ns <= 1800 * S
    assert sum(r.features.bidirectional_packets for r in recs) == 40


def test_expire_uses_packet_time() -> None:
    table = FlowTable(settings_with(idle_timeout_s=5, active_timeout_s=10))
    table.add_frames([T0], [c2s("S")])
    assert table.expire(T0 + 4 * S) == []
    assert len(table) == 1
    (rec,) = table.expire(T0 + 6 * S)
    assert rec.end_reason == flow_pb2.END_REASON_IDLE and len(table) == 0


def test_icmp_request_and_reply_are_one_flow() -> None:
    req = ether(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(8)))
    rep = ether(ipv4("10.0.0.2", "10.0.0.1", 1, icmp(0)))
    (rec,) = run_table([(T0, req), (T0 + MS, rep)])
    assert (rec.key.src_port, rec.key.dst_port, rec.features.dst2src_packets) == (8, 0, 1)
    assert rec.features.dst_port == 0


def test_ipv6_flow() -> None:
    f = ether(ipv6("2001:db8::1", "2001:db8::2", 17, udp(1000, 53, b"q")), 0x86DD)
    (rec,) = run_table([(T0, f)])
    assert ip_text(rec.key.dst_addr) == "2001:db8::2" and rec.features.bidirectional_bytes == 49


def test_table_is_bounded_and_evicts_oldest() -> None:
    table = FlowTable(settings_with(max_flows=16))
    frames = [ether(ipv4("10.0.0.1", f"10.0.1.{i}", 17, udp(1, 2))) for i in range(40)]
    table.add_frames([T0 + i * MS for i in range(40)], frames[:40])
    assert len(table) <= 16
    evicted = table.expire(T0 + 40 * MS)
    assert len(evicted) == 24 and all(r.end_reason == flow_pb2.END_REASON_EVICTED for r in evicted)
    assert sorted(ip_text(r.key.dst_addr) for r in evicted) == sorted(f"10.0.1.{i}" for i in range(24))
    table.add_frames(
        [T0 + S + i for i in range(10)],
        [ether(ipv4("10.0.0.7", f"10.0.2.{i}", 17, udp(1, 2))) for i in range(10)],
    )
    assert len(table) == 16 and table.counters.evicted == 34


def test_add_frames_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="timestamps"):
        FlowTable().add_frames([1, 2], [b"x"])


# --- batch independence and the sequential oracle -------------------------------------------

FLAGS = ["S", "SA", "A", "PA", "FA", "RA", "R", ""]


@st.composite
def packet_stream(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    n = draw(st.integers(1, 40))
    t = T0
    out = []
    for _ in range(n):
        t += draw(st.sampled_from([0, 1, MS, 300 * MS, 500 * MS, 700 * MS, 3 * S, 50 * S, 130 * S]))
        conn = draw(st.integers(0, 3))
        fwd = draw(st.booleans())
        flags = draw(st.sampled_from(FLAGS))
        if conn == 3:
            frame = (
                ether(ipv4("10.0.0.5", "10.0.0.6", 17, udp(7, 8)))
                if fwd
                else ether(ipv4("10.0.0.6", "10.0.0.5", 17, udp(8, 7)))
            )
        else:
            frame = c2s(flags, sport=40000 + conn) if fwd else s2c(flags, sport=40000 + conn)
        out.append((t, frame))
    return out


def feed(
    packets: list[tuple[int, bytes]], cuts: list[int], cfg: SnifferSettings
) -> list[flow_pb2.FlowRecord]:
    table = FlowTable(cfg)
    out: list[flow_pb2.FlowRecord] = []
    bounds = sorted({0, len(packets), *[c % (len(packets) + 1) for c in cuts]})
    for lo, hi in itertools.pairwise(bounds):
        part = packets[lo:hi]
        if part:
            table.add_frames([t for t, _ in part], [f for _, f in part])
            out += table.expire(part[-1][0])
    return out + table.flush()


CFG = settings_with(idle_timeout_s=120, active_timeout_s=300, tcp_close_linger_s=2)
# the live-lab settings: unanswered flows leave after 0.5 s, closed ones at once
CFG_LIVE = settings_with(
    idle_timeout_s=120,
    active_timeout_s=300,
    tcp_close_linger_s=0,
    half_open_timeout_s=0.5,
    export_active_interval_s=2,
)


@pytest.mark.parametrize("cfg", [CFG, CFG_LIVE], ids=["default", "live"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_stream(), st.lists(st.integers(0, 60), max_size=8))
def test_records_do_not_depend_on_batch_cuts(
    cfg: SnifferSettings, packets: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    whole = feed(packets, [], cfg)
    assert canon(feed(packets, cuts, cfg)) == canon(whole)
    assert canon(feed(packets, list(range(len(packets))), cfg)) == canon(whole)
    assert sum(r.features.bidirectional_packets for r in whole) == len(packets)


@pytest.mark.parametrize("cfg", [CFG, CFG_LIVE], ids=["default", "live"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_stream(), st.lists(st.integers(0, 60), max_size=4))
def test_vectorised_splitter_matches_sequential_oracle(
    cfg: SnifferSettings, packets: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    fast = feed(packets, cuts, cfg)
    saved = flows_mod._MAX_SPLIT_ROUNDS
    flows_mod._MAX_SPLIT_ROUNDS = 0  # every batch goes through the per-packet reference splitter
    try:
        slow = feed(packets, cuts, cfg)
    finally:
        flows_mod._MAX_SPLIT_ROUNDS = saved
    assert canon(fast) == canon(slow)


def test_records_match_plain_protobuf_construction() -> None:
    """The NumPy-serialized records parse to the same message a field-by-field build gives."""
    (rec,) = run_table([(T0, c2s("S")), (T0 + MS, s2c("SA"))])
    manual = flow_pb2.FlowRecord(
        flow_id=rec.flow_id,
        community_id=rec.community_id,
        key=flow_pb2.FlowKey(
            src_addr=bytes([10, 0, 0, 1]),
            dst_addr=bytes([10, 0, 0, 2]),
            src_port=40000,
            dst_port=80,
            protocol=6,
        ),
        first_seen_ns=T0,
        last_seen_ns=T0 + MS,
        end_reason=flow_pb2.END_REASON_WINDOW,
        node_id="test",
        captured_ns=rec.captured_ns,
        features=flow_pb2.FlowFeatures(**features_dict(rec.features)),
    )
    assert rec.SerializeToString(deterministic=True) == manual.SerializeToString(deterministic=True)


FLOW_TUPLE = st.tuples(
    st.sampled_from([4, 16]),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from([1, 6, 17, 47, 58, 132]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(FLOW_TUPLE, min_size=1, max_size=12))
def test_vectorised_community_ids_match_reference(
    flows: list[tuple[int, bytes, bytes, int, int, int]],
) -> None:
    fam = np.array([4 if alen == 4 else 6 for alen, *_ in flows])
    rows = [(a[:alen], b[:alen], sp % 256 if p in (1, 58) else sp, dp % 256 if p in (1, 58) else dp, p)
            for alen, a, b, sp, dp, p in flows]  # fmt: skip
    src = {
        f: np.array([list(r[0]) for r, x in zip(rows, fam, strict=True) if x == f], dtype=np.uint8).reshape(
            -1, 4 if f == 4 else 16
        )
        for f in (4, 6)
    }
    dst = {
        f: np.array([list(r[1]) for r, x in zip(rows, fam, strict=True) if x == f], dtype=np.uint8).reshape(
            -1, 4 if f == 4 else 16
        )
        for f in (4, 6)
    }
    cid, _ = wire.community_ids(
        fam,
        src,
        dst,
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows]),
        np.array([r[4] for r in rows]),
    )
    got = [bytes(row).decode() for row in cid]
    assert got == [community_id(*r) for r in rows]


# --- capture files ---------------------------------------------------------------------------


def sample_frames() -> tuple[list[bytes], list[int]]:
    frames = [c2s("S"), s2c("SA"), c2s("A"), ether(ipv4("10.0.0.3", "10.0.0.4", 17, udp(1, 2)))]
    return frames, [T0 + i * 1_234_567 for i in range(len(frames))]


@pytest.mark.parametrize(
    "writer",
    [
        lambda p, f, t: write_pcap(p, f, t),
        lambda p, f, t: write_pcap(p, f, t, nanosecond=True),
        lambda p, f, t: write_pcap(p, f, t, big_endian=True),
        lambda p, f, t: write_pcapng(p, f, t, tsresol_exp=9),
        lambda p, f, t: write_pcapng(p, f, t, tsresol_exp=6),
    ],
    ids=["pcap-us", "pcap-ns", "pcap-be", "pcapng-ns", "pcapng-us"],
)
def test_capture_formats(tmp_path: Path, writer: Any) -> None:
    frames, ts = sample_frames()
    path = writer(tmp_path / "x.cap", frames, ts)
    res = extract_flows([path], settings_with())
    assert res.error is None
    assert res.stats["packets"] == 4 and len(res.records) == 2
    tcp_rec = next(r for r in res.records if r.key.protocol == 6)
    assert tcp_rec.first_seen_ns == T0
    # microsecond formats round the 1.234567 ms steps down to whole microseconds
    assert tcp_rec.last_seen_ns in (ts[2], ts[2] // 1000 * 1000)
    assert tcp_rec.interface == "x.cap"


def test_truncated_capture_keeps_flows_before_the_damage(tmp_path: Path) -> None:
    frames, ts = sample_frames()
    path = write_pcap(tmp_path / "t.pcap", frames, ts)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    res = extract_flows([path], settings_with())
    assert res.error is not None
    assert "truncated at packet 4" in res.error.message and str(path) in res.error.message
    assert res.stats["packets"] == 3 and sum(r.features.bidirectional_packets for r in res.records) == 3


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "not found"), (b"hello world, not a capture", "not a pcap"), (b"\xd4\xc3", "only 2 bytes")],
)
def test_unreadable_files_give_input_errors(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "bad.pcap"
    if content is not None:
        path.write_bytes(content)
    res = extract_flows([path])
    assert res.error is not None and problem in res.error.message and str(path) in res.error.message
    assert res.error.exit_code == 1 and res.records == []


def test_non_ethernet_pcap_is_refused(tmp_path: Path) -> None:
    frames, ts = sample_frames()
    path = write_pcap(tmp_path / "sll.pcap", frames, ts, linktype=113)
    res = extract_flows([path])
    assert res.error is not None and "link type 113" in res.error.message


def test_stats_and_table_settings_swap() -> None:
    table = FlowTable(settings_with(idle_timeout_s=100))
    table.update_settings(settings_with(idle_timeout_s=1).flows)
    table.add_frames([T0], [c2s("S")])
    assert len(table.expire(T0 + 2 * S)) == 1
    assert math.isclose(table.flow_settings.idle_timeout_s, 1)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(-5 * S, 5 * S),
            st.sampled_from(
                [c2s("S"), s2c("RA"), c2s("FA"), ether(ipv4("10.0.0.5", "10.0.0.6", 17, udp(7, 8)))]
            ),
            st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 7),
)
def test_table_survives_mutated_frames_and_clock_steps(
    items: list[tuple[int, bytes, list[tuple[int, int]]]], batch: int
) -> None:
    """Damaged frames and timestamps that jump back and forth: no crash, no packet lost."""
    table = FlowTable(CFG)
    out: list[flow_pb2.FlowRecord] = []
    t = T0
    for lo in range(0, len(items), batch):
        ts, frames = [], []
        for dt, frame, flips in items[lo : lo + batch]:
            raw = bytearray(frame)
            for pos, value in flips:
                raw[pos % len(raw)] = value
            t += dt
            ts.append(t)
            frames.append(bytes(raw))
        table.add_frames(ts, frames)
        out += table.expire(max(ts))
    out += table.flush()
    assert sum(r.features.bidirectional_packets for r in out) == table.counters.ip_packets
    assert table.counters.ip_packets + sum(table.counters.malformed.values()) == len(items)
    assert all(r.features.bidirectional_duration_ms >= 0 for r in out)


@pytest.mark.parametrize("big_endian", [False, True])
def test_native_record_walk_matches_python_walk(tmp_path: Path, big_endian: bool) -> None:
    """The C helper (when it builds) and the Python walk find the same records and stop point."""
    from services.sniffer import native, pcapfile

    frames = [c2s("S", b"x" * (i * 37 % 700)) for i in range(300)]
    path = write_pcap(tmp_path / "w.pcap", frames, [T0 + i for i in range(300)], big_endian=big_endian)
    data = path.read_bytes()[:-5]  # damaged last record
    walked = native.pcap_walk(np.frombuffer(data, np.uint8), 24, big_endian, pcapfile.MAX_RECORD_BYTES)
    if walked is None:
        pytest.skip("no C compiler: the Python walk is used")
    import struct

    py = (
        pcapfile._walk_struct(data, len(data), struct.Struct(">IIII").unpack_from)
        if big_endian
        else pcapfile._walk_le(data, len(data))
    )
    assert walked[0].tolist() == py[:-1] and walked[1] == py[-1]
    assert len(py) - 1 == 299
