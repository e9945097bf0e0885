"""The XDP flow meter on a veth in a test namespace: counts, damage by reason, timeouts, evictions,
native mode, and reconciliation with the kernel after a crash."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from xdp_helpers import (
    RX_IF,
    Capture,
    VethPair,
    eth,
    icmp,
    ipv4,
    ipv6,
    record_json,
    tcp,
    udp,
    veth_pair,
    write_pcap,
)

from helpers import wait_for
from services.sniffer.flows import extract_flows

pytestmark = pytest.mark.privileged

SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04


@pytest.fixture
def pair(require_root: None) -> Any:
    with veth_pair() as p:
        yield p


@pytest.fixture
def pair1500(require_root: None) -> Any:
    """MTU 1500: native XDP on a veth refuses a larger peer MTU."""
    with veth_pair(mtu=1500) as p:
        yield p


def run_capture(
    pair: VethPair, pcap: Path, sent: int, settings: dict[str, Any] | None = None, source: str = "xdp"
) -> Capture:
    cap = Capture(pair, source, settings)
    try:
        cap.wait_ready()
        pair.replay(pcap)
        cap.wait_packets(sent)
        cap.stop()
    finally:
        cap.kill()
    return cap


def crafted_frames() -> list[bytes]:
    """Good flows of every shape the parser knows, and one frame per kind of damage."""
    a, b = "198.18.0.1", "198.18.0.2"
    v6a, v6b = "2001:db8::1", "2001:db8::2"
    hop_by_hop = bytes([6, 0]) + bytes(6)  # next header TCP, 8 bytes
    atomic_frag = bytes([17, 0, 0, 0]) + bytes(4)  # next UDP, offset 0, M=0: not really a fragment
    frames = [
        *(eth(ipv4(a, b, 17, udp(1000, 53))) for _ in range(5)),
        *(eth(ipv4(b, a, 17, udp(53, 1000, b"y" * 40))) for _ in range(3)),
        eth(ipv4(a, b, 6, tcp(40000, 80, SYN))),
        eth(ipv4(b, a, 6, tcp(80, 40000, SYN | ACK))),
        eth(ipv4(a, b, 6, tcp(40000, 80, ACK | PSH, b"GET / HTTP/1.0\r\n\r\n"))),
        eth(ipv4(b, a, 6, tcp(80, 40000, RST))),
        eth(ipv6(v6a, v6b, 0, hop_by_hop + tcp(5000, 443, SYN)), 0x86DD),
        eth(ipv6(v6b, v6a, 6, tcp(443, 5000, SYN | ACK)), 0x86DD),
        eth(ipv6(v6a, v6b, 44, atomic_frag + udp(7, 7)), 0x86DD),
        eth(ipv4(a, b, 17, udp(2000, 2001)), vlans=(42,)),
        eth(ipv4(a, b, 17, udp(2000, 2001)), vlans=(100, 200)),
        eth(ipv4(a, "198.18.0.9", 1, icmp(8, 0))),
        eth(ipv4("198.18.0.9", a, 1, icmp(0, 0))),
        eth(ipv4(a, b, 47, b"\x00" * 24)),  # GRE: no ports
        # damage, one of each reason
        eth(b"\x00" * 28, 0x0806),  # ARP: non_ip
        eth(ipv4(a, b, 17, udp(1, 2)), vlans=(1, 2, 3)),  # vlan_too_deep
        eth(ipv4(a, b, 17, udp(1, 2))[:12]),  # truncated_ip
        eth(b"\x60" + ipv4(a, b, 17, udp(1, 2))[1:]),  # bad_ip_version
        eth(ipv4(a, b, 17, udp(1, 2), ihl=4)),  # bad_ip_header_length
        eth(ipv4(a, b, 17, udp(1, 2), total=10)),  # bad_ip_total_length
        eth(ipv4(a, b, 17, udp(1, 2), frag=0x2000)),  # ip_fragment (MF)
        eth(ipv6(v6a, v6b, 44, bytes([17, 0, 0, 9]) + bytes(4) + udp(1, 2)), 0x86DD),  # ip_fragment (v6)
        eth(ipv6(v6a, v6b, 60, bytes([60, 0]) + bytes(6)), 0x86DD),  # ipv6_ext_headers (runs off the end)
        eth(ipv4(a, b, 6, tcp(1, 2, SYN)[:8])),  # truncated_l4
        eth(ipv4(a, b, 6, tcp(1, 2, SYN, doff=4))),  # bad_tcp_header_length
    ]
    return frames


@pytest.mark.parametrize("source", ["xdp", "afpacket"])
def test_counts_and_damage_match_user_space(pair: VethPair, tmp_path: Path, source: str) -> None:
    """Every frame shape and every kind of damage: same flows and same counts by reason as the
    pcap path (for afpacket this checks VLAN tags the kernel moved out of the frame come back)."""
    frames = crafted_frames()
    pcap = write_pcap(tmp_path / "crafted.pcap", frames)
    ex = extract_flows([pcap])
    cap = run_capture(pair, pcap, len(frames), source=source)
    stats = cap.stats
    assert stats is not None
    assert stats["packets"] == len(frames)
    assert stats["ip_packets"] == ex.stats["ip_packets"]
    kernel_damage = {k: stats[f"malformed_{k}"] for k in ex.stats["malformed"]}
    assert kernel_damage == ex.stats["malformed"], "kernel and decoder count damage differently"
    # every reason but truncated_frame (a veth does not carry frames shorter than 14 bytes)
    assert len(ex.stats["malformed"]) == 10, ex.stats["malformed"]

    def rows(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        keep = ("packets", "bytes", "min_ps", "max_ps", "mean_ps", "stddev_ps", "syn_packets", "rst_packets")
        out = []
        for r in records:
            key = (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["protocol_number"], r["vlan_id"])
            feats = [
                v
                for k, v in sorted(r["features"].items())
                if k.endswith(keep) or k in ("dst_port", "protocol")
            ]
            out.append((*key, *feats, r["end_reason"]))
        return sorted(out)

    assert rows(cap.records) == rows([record_json(r) for r in ex.records])
    vlans = {r["vlan_id"] for r in cap.records}
    assert {42, 100} <= vlans
    icmp_flows = [r for r in cap.records if r["protocol_number"] == 1]
    assert len(icmp_flows) == 1 and icmp_flows[0]["features"]["bidirectional_packets"] == 2
    assert (icmp_flows[0]["src_port"], icmp_flows[0]["dst_port"]) == (8, 0)


def test_idle_gap_splits_in_kernel_and_sweep_exports(pair: VethPair, tmp_path: Path) -> None:
    """Idle timeout 0.4 s. (1) Two packets 1 s apart, no sweep: the second packet ends the first
    flow in the kernel (END notice on the ring buffer, IDLE). (2) One packet, sweep every 100 ms:
    the sweep exports it as IDLE while the capture runs."""
    frame = eth(ipv4("198.18.0.1", "198.18.0.2", 17, udp(3000, 3001)))
    flows = {"idle_timeout_s": 0.4, "active_timeout_s": 60}
    pcap = write_pcap(tmp_path / "gap.pcap", [frame, frame], step_us=1_000_000)
    cap = Capture(pair, "xdp", {"flows": flows, "xdp": {"sweep_interval_ms": 60_000}})
    try:
        cap.wait_ready()
        pair.replay(pcap, extra=())  # the capture's own pacing: 1 s between the packets
        wait_for(lambda: len(cap.records) >= 1, timeout=10, what="the kernel's IDLE record")
        stats = cap.stop()
    finally:
        cap.kill()
    assert cap.records[0]["end_reason"] == "IDLE"
    assert [r["features"]["bidirectional_packets"] for r in cap.records] == [1, 1]
    assert stats["flows_exported_ringbuf"] == 1 and stats["flows_exported_sweep"] == 0

    pcap = write_pcap(tmp_path / "one.pcap", [frame])
    cap = Capture(pair, "xdp", {"flows": flows, "xdp": {"sweep_interval_ms": 100}})
    try:
        cap.wait_ready()
        pair.replay(pcap)
        wait_for(lambda: len(cap.records) >= 1, timeout=10, what="the sweep's IDLE record")
        stats = cap.stop()
    finally:
        cap.kill()
    assert [r["end_reason"] for r in cap.records] == ["IDLE"]
    assert stats["flows_exported_sweep"] == 1 and stats["map_entries"] == 0


def test_lru_evictions_are_counted(pair: VethPair, tmp_path: Path) -> None:
    """More flows than map entries: the LRU evicts silently in the kernel; stats account for all."""
    n = 3000
    frames = [eth(ipv4("198.18.1.1", "198.18.1.2", 17, udp(10000 + i, 53))) for i in range(n)]
    pcap = write_pcap(tmp_path / "many.pcap", frames, step_us=10)
    cap = run_capture(pair, pcap, n, {"xdp": {"map_max_entries": 1024, "sweep_interval_ms": 60_000}})
    stats = cap.stats
    assert stats is not None
    assert stats["flows_created"] == n
    assert stats["evicted"] > 0
    assert stats["flows"] + stats["evicted"] == n
    assert len(cap.records) == stats["flows"] <= 1024


def test_native_mode_on_veth(pair1500: VethPair, tmp_path: Path) -> None:
    pair = pair1500
    frames = [eth(ipv4("198.18.2.1", "198.18.2.2", 6, tcp(1234, 22, f))) for f in (SYN, SYN | ACK, ACK)]
    pcap = write_pcap(tmp_path / "native.pcap", frames)
    # veth runs native XDP on the receiving side only when the peer can deliver to it (GRO/XDP)
    pair.exec(pair.tx_ns, ["ethtool", "-K", "mldtx", "gro", "on"], check=False)
    pair.exec(pair.rx_ns, ["ethtool", "-K", RX_IF, "gro", "on"], check=False)
    cap = Capture(pair, "xdp", {"xdp": {"mode": "native"}})
    try:
        cap.wait_ready()
        assert "prog/xdp" in pair.xdp_prog() and "xdpgeneric" not in pair.xdp_prog()
        pair.replay(pcap)
        cap.wait_packets(len(frames))
        cap.stop()
    finally:
        cap.kill()
    assert [r["features"]["bidirectional_packets"] for r in cap.records] == [3]
    assert "prog/xdp" not in pair.xdp_prog()


def test_stale_program_is_detached_after_a_crash(pair: VethPair, tmp_path: Path) -> None:
    first = Capture(pair, "xdp")
    first.wait_ready()
    first.kill()  # SIGKILL: no chance to detach
    assert "mld_xdp_flow" in pair.xdp_prog(), "the crashed capture should have left its program"
    frame = eth(ipv4("198.18.3.1", "198.18.3.2", 17, udp(1, 2)))
    pcap = write_pcap(tmp_path / "one.pcap", [frame])
    second = run_capture(pair, pcap, 1)
    assert second.stats is not None and second.stats["stale_detached"] == 1
    assert len(second.records) == 1
    assert "prog/xdp" not in pair.xdp_prog(), "a clean stop detaches"


def test_someone_elses_program_is_not_replaced(pair: VethPair, tmp_path: Path) -> None:
    src = tmp_path / "other.c"
    src.write_text(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        'SEC("xdp") int other_prog(struct xdp_md *c) { return XDP_PASS; }\n'
        'char LICENSE[] SEC("license") = "GPL";\n'
    )
    obj = tmp_path / "other.o"
    subprocess.run(
        ["clang", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(src), "-o", str(obj)],
        check=True,
        timeout=60,
    )
    pair.exec(pair.rx_ns, ["ip", "link", "set", "dev", RX_IF, "xdpgeneric", "obj", str(obj), "sec", "xdp"])
    cap = Capture(pair, "xdp")
    with pytest.raises(AssertionError, match="already has XDP program other_prog"):
        cap.wait_ready()
    assert "other_prog" in pair.xdp_prog(), "the other program must stay attached"


def test_timing_features_at_real_pace(pair: VethPair, tmp_path: Path) -> None:
    """Replayed at the capture's own pace, durations and inter-arrival stats match the pcap path
    within the replay's jitter. The 4.5 s gap makes the kernel's ns^2 sum pass 64 bits."""
    a, b = "198.18.4.1", "198.18.4.2"
    frames = [
        eth(ipv4(a, b, 17, udp(5000, 5001))),
        eth(ipv4(b, a, 17, udp(5001, 5000, b"r" * 100))),
        eth(ipv4(a, b, 17, udp(5000, 5001, b"q" * 300))),
        eth(ipv4(b, a, 17, udp(5001, 5000))),
    ]
    gaps_us = [0, 200_000, 4_500_000, 100_000]
    pcap = tmp_path / "paced.pcap"
    write_pcap(pcap, frames, step_us=1)
    # rewrite the timestamps with the uneven gaps
    raw = bytearray(pcap.read_bytes())
    pos, t_us = 24, 0
    for frame, gap in zip(frames, gaps_us, strict=True):
        t_us += gap
        raw[pos : pos + 8] = struct.pack("<II", 1_700_000_000 + t_us // 1_000_000, t_us % 1_000_000)
        pos += 16 + len(frame)
    pcap.write_bytes(bytes(raw))
    (want,) = [record_json(r) for r in extract_flows([pcap]).records]
    cap = Capture(pair, "xdp", {"flows": {"idle_timeout_s": 30}})
    try:
        cap.wait_ready()
        pair.replay(pcap, extra=())
        cap.wait_packets(len(frames))
        cap.stop()
    finally:
        cap.kill()
    (got,) = cap.records
    for name, value in want["features"].items():
        tol = 50.0 if name.endswith("_ms") else 1e-9  # ms of replay jitter on a loaded host
        assert got["features"][name] == pytest.approx(value, abs=tol), name
    assert got["features"]["bidirectional_stddev_piat_ms"] > 1000  # the big gap really counted
