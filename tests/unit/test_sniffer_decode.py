"""Decoding of frames: every header path, and malformed input counted by reason, never raised."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.sniffer.decode import MALFORMED_REASONS, addr_bytes, decode, frames_to_buffer
from services.sniffer.testing import ether, icmp, ipv4, ipv6, ipv6_ext, ipv6_frag, tcp, udp

pytestmark = pytest.mark.unit


def run(frames: list[bytes]):  # type: ignore[no-untyped-def]
    data, off, lens = frames_to_buffer(frames)
    return decode(data, off, lens, np.arange(len(frames), dtype=np.int64) * 1000)


def only_reason(pk, reason: str, count: int = 1) -> None:  # type: ignore[no-untyped-def]
    assert pk.malformed[reason] == count, pk.malformed
    assert sum(pk.malformed.values()) == count, pk.malformed


def test_ipv4_tcp_fields() -> None:
    f = ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1234, 80, "SA", b"hello")))
    pk = run([f])
    assert len(pk) == 1
    assert addr_bytes(4, int(pk.s_hi[0]), int(pk.s_lo[0])) == bytes([10, 0, 0, 1])
    assert addr_bytes(4, int(pk.d_hi[0]), int(pk.d_lo[0])) == bytes([10, 0, 0, 2])
    assert (pk.sport[0], pk.dport[0], pk.proto[0], pk.vlan[0]) == (1234, 80, 6, 0)
    assert pk.size[0] == 20 + 20 + 5  # IP-layer size, not the frame
    assert pk.flags[0] == 0x12
    assert pk.total_bytes == len(f)


def test_ethernet_padding_does_not_change_size() -> None:
    f = ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)))
    padded = f + b"\x00" * (60 - len(f))
    pk = run([f, padded])
    assert pk.size.tolist() == [28, 28]


def test_vlan_and_qinq_use_the_outer_tag() -> None:
    inner = ipv4("10.0.0.1", "10.0.0.2", 17, udp(53, 53))
    pk = run([ether(inner, vlans=[100]), ether(inner, vlans=[200, 300], tpid=0x88A8)])
    assert pk.vlan.tolist() == [100, 200]
    assert pk.sport.tolist() == [53, 53]


def test_three_vlan_tags_are_too_deep() -> None:
    only_reason(run([ether(ipv4("1.1.1.1", "2.2.2.2", 17, udp(1, 2)), vlans=[1, 2, 3])]), "vlan_too_deep")


def test_ipv6_extension_headers_are_skipped() -> None:
    payload = ipv6_ext(60, 1) + ipv6_ext(6, 0) + tcp(5555, 443, "S")
    pk = run([ether(ipv6("2001:db8::1", "2001:db8::2", 0, payload), 0x86DD)])
    assert len(pk) == 1
    assert (pk.proto[0], pk.sport[0], pk.dport[0], pk.fam[0]) == (6, 5555, 443, 6)
    assert pk.size[0] == 40 + len(payload)
    assert addr_bytes(6, int(pk.s_hi[0]), int(pk.s_lo[0])) == bytes.fromhex("20010db8" + "0" * 23 + "1")


def test_ipv6_fragments_atomic_kept_others_counted() -> None:
    atomic = ether(ipv6("2001:db8::1", "2001:db8::2", 44, ipv6_frag(17) + udp(1, 2)), 0x86DD)
    first = ether(ipv6("2001:db8::1", "2001:db8::2", 44, ipv6_frag(17, more=True) + udp(1, 2)), 0x86DD)
    later = ether(ipv6("2001:db8::1", "2001:db8::2", 44, ipv6_frag(17, offset=100) + b"x" * 8), 0x86DD)
    pk = run([atomic, first, later])
    assert len(pk) == 1 and pk.proto[0] == 17
    only_reason(pk, "ip_fragment", 2)


def test_ipv6_extension_chain_truncated() -> None:
    f = ether(ipv6("2001:db8::1", "2001:db8::2", 0, ipv6_ext(6, 4)[:10]), 0x86DD)
    only_reason(run([f]), "ipv6_ext_headers")


def test_icmp_and_icmpv6_have_no_key_ports() -> None:
    v4 = ether(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(8)))
    v6 = ether(ipv6("2001:db8::1", "2001:db8::2", 58, icmp(128)), 0x86DD)
    pk = run([v4, v6])
    assert pk.sport.tolist() == [0, 0] and pk.dport.tolist() == [0, 0]
    assert pk.icmp.tolist() == [8 << 8, 128 << 8]


def test_other_ip_protocols_are_flows_without_ports() -> None:
    pk = run([ether(ipv4("10.0.0.1", "10.0.0.2", 47, b"\x00" * 8))])
    assert len(pk) == 1 and pk.proto[0] == 47 and pk.sport[0] == 0


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00" * 10, "truncated_frame"),
        (ether(b"", 0x0806) + b"\x00" * 28, "non_ip"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2)))[:30], "truncated_ip"),
        (ether(b"\x60" + b"\x00" * 19), "bad_ip_version"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2), ihl=3)), "bad_ip_header_length"),
        (ether(b"\x4f" + ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2))[1:]), "truncated_ip"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 17, udp(1, 2), frag=0x2000)), "ip_fragment"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 17, b"\x00" * 8, frag=10)), "ip_fragment"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2)[:10])), "truncated_l4"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 17, b"\x00\x01")), "truncated_l4"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2, doff=2))), "bad_tcp_header_length"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2)), vlans=[5])[:16], "truncated_frame"),
    ],
)
def test_malformed_frames_are_counted_by_reason(frame: bytes, reason: str) -> None:
    good = ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)))
    pk = run([good, frame, good])
    assert len(pk) == 2, "the good frames around the bad one survive"
    only_reason(pk, reason)


def test_bad_total_length() -> None:
    raw = bytearray(ipv4("1.1.1.1", "2.2.2.2", 17, udp(1, 2)))
    raw[2:4] = (10).to_bytes(2, "big")
    only_reason(run([ether(bytes(raw))]), "bad_ip_total_length")


def test_unsupported_linktype_is_counted() -> None:
    frames = [ether(ipv4("1.1.1.1", "2.2.2.2", 17, udp(1, 2)))] * 2
    data, off, lens = frames_to_buffer(frames)
    pk = decode(data, off, lens, np.zeros(2, dtype=np.int64), np.array([1, 113]))
    assert len(pk) == 1
    only_reason(pk, "unsupported_linktype")


def _check_accounting(frames: list[bytes]) -> None:
    pk = run(frames)
    assert set(pk.malformed) == set(MALFORMED_REASONS)
    assert len(pk) + sum(pk.malformed.values()) == len(frames)
    assert pk.total == len(frames)
    assert (pk.size >= 0).all() and (pk.sport <= 65535).all()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=20))
def test_fuzz_random_bytes_never_crash(frames: list[bytes]) -> None:
    _check_accounting(frames)


SEEDS = [
    ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1234, 80, "S")), vlans=[7]),
    ether(ipv6("2001:db8::1", "2001:db8::2", 0, ipv6_ext(44, 0) + ipv6_frag(17) + udp(1, 2)), 0x86DD),
    ether(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(8))),
    ether(ipv6("2001:db8::1", "2001:db8::2", 58, icmp(128)), 0x86DD, vlans=[1, 2]),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_fuzz_mutated_real_frames_never_crash(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    raw = bytearray(seed)
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    _check_accounting([bytes(raw[: max(cut, 0)]) if cut < len(raw) else bytes(raw), seed])
