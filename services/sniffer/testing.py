"""Frame and capture builders for tests (ours and the XDP/AF_PACKET parity tests).

Plain byte assembly, no third-party packet library, so a test states exactly which bytes it
feeds the decoder. Checksums are left zero: nothing on the flow path verifies them.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from pathlib import Path

ETH_SRC = bytes.fromhex("020000000001")
ETH_DST = bytes.fromhex("020000000002")


def ether(payload: bytes, ethertype: int = 0x0800, vlans: Sequence[int] = (), tpid: int = 0x8100) -> bytes:
    """Ethernet II frame; `vlans` adds 802.1Q tags outermost first (QinQ: two tags)."""
    tags = b""
    for i, vid in enumerate(vlans):
        tags += struct.pack("!HH", tpid if i == 0 else 0x8100, vid & 0x0FFF)
    return ETH_DST + ETH_SRC + tags + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64, frag: int = 0, ihl: int = 5) -> bytes:
    """IPv4 header (+ options padding when ihl > 5) and payload; frag is flags|offset."""
    opts = b"\x01" * ((ihl - 5) * 4) if ihl > 5 else b""
    total = 4 * max(ihl, 5) + len(payload) if ihl >= 5 else 20 + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | (ihl & 0x0F),
        0,
        total,
        1,
        frag,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + opts + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    """IPv6 header; `payload` may start with extension headers (see ipv6_ext)."""
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), next_header, hop_limit)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def ipv6_ext(next_header: int, body_len_units: int = 0) -> bytes:
    """A hop-by-hop/routing/destination-options header of (units+1)*8 bytes."""
    return bytes([next_header, body_len_units]) + b"\x01\x04\x00\x00\x00\x00" + b"\x00" * (8 * body_len_units)


def ipv6_frag(next_header: int, offset: int = 0, more: bool = False) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset << 3) | int(more), 7)


def tcp(sport: int, dport: int, flags: str = "", payload: bytes = b"", seq: int = 1, doff: int = 5) -> bytes:
    """TCP segment; flags from the letters F S R P A U."""
    bits = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}
    f = sum(bits[c] for c in flags)
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, doff << 4, f, 65535, 0, 0)
    return hdr + b"\x00" * max(0, (doff - 5) * 4) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(type_: int, code: int = 0, payload: bytes = b"\x00" * 4) -> bytes:
    return struct.pack("!BBH", type_, code, 0) + payload


def write_pcap(
    path: Path | str,
    frames: Sequence[bytes],
    ts_ns: Sequence[int],
    nanosecond: bool = False,
    big_endian: bool = False,
    linktype: int = 1,
) -> Path:
    """A classic pcap (micro- or nanosecond, either byte order)."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    div = 1 if nanosecond else 1000
    parts = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for frame, ts in zip(frames, ts_ns, strict=True):
        parts.append(struct.pack(e + "IIII", ts // 10**9, (ts % 10**9) // div, len(frame), len(frame)))
        parts.append(frame)
    p = Path(path)
    p.write_bytes(b"".join(parts))
    return p


def write_pcapng(
    path: Path | str, frames: Sequence[bytes], ts_ns: Sequence[int], tsresol_exp: int = 9
) -> Path:
    """A pcapng with one Ethernet interface whose timestamps are in 10^-tsresol_exp seconds."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opt = struct.pack("<HHB", 9, 1, tsresol_exp) + b"\x00" * 3 + struct.pack("<HH", 0, 0)
    idb = block(1, struct.pack("<HHI", 1, 0, 262144) + opt)
    parts = [shb, idb]
    for frame, ts in zip(frames, ts_ns, strict=True):
        units = ts // (10 ** (9 - tsresol_exp))
        parts.append(
            block(
                6, struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame)) + frame
            )
        )
    p = Path(path)
    p.write_bytes(b"".join(parts))
    return p
