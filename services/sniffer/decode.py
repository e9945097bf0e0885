"""Vectorised decoding of Ethernet frames into flow-key fields, sizes and TCP flags.

All frames of a batch are decoded at once with NumPy fancy indexing into one byte buffer, so the
cost per packet is a few array operations rather than Python objects. Every frame that cannot be
used is counted under one reason in `MALFORMED_REASONS`; nothing raises on bad bytes.

Conventions shared with the XDP and AF_PACKET paths (DESIGN.md section 4):
- packet size (`ps`) is the IP-layer size: IPv4 total length, IPv6 40 + payload length
  (NFStream's `accounting_mode=1`), so Ethernet padding and VLAN tags do not change features;
- `vlan_id` is the outer 802.1Q/802.1ad tag (QinQ: the first tag), 0 when untagged;
- ICMP and ICMPv6 flows are keyed without ports (one flow per address pair, as NFStream does);
  the record shows the first packet's type and code as src/dst port;
- IPv4 fragments and IPv6 fragments other than atomic ones are counted and skipped.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.sniffer.pcapfile import LINKTYPE_ETHERNET

MALFORMED_REASONS: tuple[str, ...] = (
    "truncated_frame",
    "unsupported_linktype",
    "non_ip",
    "vlan_too_deep",
    "truncated_ip",
    "bad_ip_version",
    "bad_ip_header_length",
    "bad_ip_total_length",
    "ip_fragment",
    "ipv6_ext_headers",
    "truncated_l4",
    "bad_tcp_header_length",
)
"""Why a frame was skipped; `non_ip` (ARP, LLDP, ...) is expected traffic, the rest is damage."""

_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_V6_EXT = (0, 43, 60, 135, 139, 140)  # hop-by-hop, routing, dest opts, mobility, HIP, shim6
_V6_FRAG = 44
_V6_AH = 51
_MAX_V6_EXT = 8
PORTED = (6, 17, 132)  # protocols whose flow key has ports
ICMPS = (1, 58)

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]


@dataclass
class Packets:
    """Decoded, usable packets of a batch (parallel arrays), plus malformed counts by reason."""

    ts: I64
    fam: I64  # 4 or 6
    s_hi: U64
    s_lo: U64
    d_hi: U64
    d_lo: U64
    sport: I64
    dport: I64
    proto: I64
    vlan: I64
    size: I64  # IP-layer bytes
    flags: I64  # TCP flags byte (0 for other protocols)
    icmp: I64  # ICMP type << 8 | code (0 for other protocols)
    malformed: dict[str, int]
    total: int  # frames seen, usable or not
    total_bytes: int  # captured bytes of all frames

    def __len__(self) -> int:
        return len(self.ts)


def _empty_u64() -> U64:
    return np.zeros(0, dtype=np.uint64)


def frames_to_buffer(frames: list[bytes] | tuple[bytes, ...]) -> tuple[bytes, I64, I64]:
    """Join frames into one buffer; returns (buffer, offsets, lengths)."""
    lens = np.fromiter((len(f) for f in frames), dtype=np.int64, count=len(frames))
    offsets = np.zeros(len(frames), dtype=np.int64)
    if len(frames) > 1:
        np.cumsum(lens[:-1], out=offsets[1:])
    return b"".join(frames), offsets, lens


def decode(
    data: bytes | bytearray | memoryview | mmap.mmap,
    offsets: I64,
    caplens: I64,
    ts_ns: I64,
    linktypes: I64 | None = None,
) -> Packets:
    """Decode frames `data[offsets[i]:offsets[i]+caplens[i]]` (Ethernet) captured at `ts_ns[i]`."""
    n = len(offsets)
    malformed = dict.fromkeys(MALFORMED_REASONS, 0)
    total_bytes = int(caplens.sum()) if n else 0
    # No copy of the capture: reads are clamped to the buffer and rows whose headers run past
    # their frame are dropped by the length checks, so clamped garbage is never used.
    buf = (
        np.frombuffer(data, dtype=np.uint8)
        if len(data) >= 64
        else np.frombuffer(bytes(data) + bytes(64), np.uint8)
    )
    off = offsets.astype(np.int64)
    cap = caplens.astype(np.int64)
    ts = ts_ns.astype(np.int64)

    keep = np.ones(n, dtype=bool)

    def drop(mask: B, reason: str) -> None:
        nonlocal keep
        malformed[reason] += int(mask.sum())
        keep &= ~mask

    if linktypes is not None:
        drop(linktypes != LINKTYPE_ETHERNET, "unsupported_linktype")

    last = len(buf) - 2  # reads are clamped: rows pointing past the data are dropped anyway

    def u8(pos: I64) -> I64:
        return buf[np.minimum(pos, last)].astype(np.int64)

    def u16(pos: I64) -> I64:
        p = np.minimum(pos, last)
        out: I64 = (buf[p].astype(np.int64) << 8) | buf[p + 1]
        return out

    drop(keep & (cap < 14), "truncated_frame")
    eth = u16(off + 12)
    vlan = np.zeros(n, dtype=np.int64)
    l3 = np.full(n, 14, dtype=np.int64)
    for depth in range(3):
        tagged = keep & np.isin(eth, _VLAN_TYPES)
        if not tagged.any():
            break
        if depth == 2:
            drop(tagged, "vlan_too_deep")
            break
        drop(tagged & (cap < l3 + 4), "truncated_frame")
        tagged &= keep
        if depth == 0:
            vlan = np.where(tagged, u16(off + l3) & 0x0FFF, vlan)
        eth = np.where(tagged, u16(off + l3 + 2), eth)
        l3 = np.where(tagged, l3 + 4, l3)
    is4 = keep & (eth == 0x0800)
    is6 = keep & (eth == 0x86DD)
    drop(keep & ~is4 & ~is6, "non_ip")

    # Keep only candidate packets from here on (shrinks every later operation).
    idx = np.flatnonzero(keep)
    off, cap, ts, vlan, l3 = off[idx], cap[idx], ts[idx], vlan[idx], l3[idx]
    is4, is6 = is4[idx], is6[idx]
    m = len(idx)
    keep = np.ones(m, dtype=bool)
    base = off + l3
    room = cap - l3  # bytes captured from the IP header on

    drop(is4 & (room < 20), "truncated_ip")
    drop(is6 & (room < 40), "truncated_ip")
    ver = u8(base) >> 4
    drop(keep & is4 & (ver != 4), "bad_ip_version")
    drop(keep & is6 & (ver != 6), "bad_ip_version")

    # IPv4
    ihl = (u8(base) & 0x0F) * 4
    tot4 = u16(base + 2)
    drop(keep & is4 & (ihl < 20), "bad_ip_header_length")
    drop(keep & is4 & (room < ihl), "truncated_ip")
    drop(keep & is4 & (tot4 < ihl), "bad_ip_total_length")
    frag4 = u16(base + 6)
    drop(keep & is4 & ((frag4 & 0x3FFF) != 0), "ip_fragment")

    # IPv6 with extension headers walked a few steps, all packets at once
    nh = np.where(is6, u8(base + 6), u8(base + 9))
    l4 = np.where(is6, base + 40, base + ihl)
    size = np.where(is6, 40 + u16(base + 4), tot4)
    end = off + cap
    for _ in range(_MAX_V6_EXT):
        ext = keep & is6 & np.isin(nh, (*_V6_EXT, _V6_FRAG, _V6_AH))
        if not ext.any():
            break
        drop(ext & (l4 + 8 > end), "ipv6_ext_headers")
        ext &= keep
        frag = ext & (nh == _V6_FRAG)
        fragfield = u16(l4 + 2)
        drop(frag & ((fragfield & 0xFFF9) != 0), "ip_fragment")  # offset != 0 or M set
        ext &= keep
        hlen = np.where(nh == _V6_AH, (u8(l4 + 1) + 2) * 4, np.where(frag, 8, (u8(l4 + 1) + 1) * 8))
        nh = np.where(ext, u8(l4), nh)
        l4 = np.where(ext, l4 + hlen, l4)
    drop(keep & is6 & np.isin(nh, (*_V6_EXT, _V6_FRAG, _V6_AH)), "ipv6_ext_headers")
    drop(keep & is6 & (l4 > end), "ipv6_ext_headers")
    proto = nh

    # Transport
    tcp = keep & (proto == 6)
    udp = keep & ((proto == 17) | (proto == 132))
    icmp = keep & ((proto == 1) | (proto == 58))
    drop(tcp & (l4 + 14 > end), "truncated_l4")
    drop(udp & (l4 + 4 > end), "truncated_l4")
    drop(icmp & (l4 + 2 > end), "truncated_l4")
    tcp &= keep
    drop(tcp & ((u8(l4 + 12) >> 4) < 5), "bad_tcp_header_length")
    tcp &= keep
    udp &= keep
    icmp &= keep
    ported = tcp | udp
    sport = np.where(ported, u16(l4), 0)
    dport = np.where(ported, u16(l4 + 2), 0)
    flags = np.where(tcp, u8(l4 + 13), 0)
    icmpv = np.where(icmp, (u8(l4) << 8) | u8(l4 + 1), 0)

    # Addresses as two big-endian u64 halves (IPv4 in the low half of the low word).
    def word(pos: I64, nbytes: int) -> U64:
        cols = buf[np.minimum(pos, last - nbytes)[:, None] + np.arange(nbytes)].astype(np.uint64)
        shifts = np.arange(nbytes - 1, -1, -1, dtype=np.uint64) * np.uint64(8)
        return np.bitwise_or.reduce(cols << shifts, axis=1) if nbytes else _empty_u64()

    k = np.flatnonzero(keep)
    b, v6 = base[k], is6[k]
    s4, d4 = word(b + 12, 4), word(b + 16, 4)
    zero = np.zeros(len(k), dtype=np.uint64)
    if v6.any():
        s_hi = np.where(v6, word(b + 8, 8), zero)
        s_lo = np.where(v6, word(b + 16, 8), s4)
        d_hi = np.where(v6, word(b + 24, 8), zero)
        d_lo = np.where(v6, word(b + 32, 8), d4)
    else:
        s_hi, s_lo, d_hi, d_lo = zero, s4, zero.copy(), d4
    return Packets(
        ts=ts[k],
        fam=np.where(v6, 6, 4).astype(np.int64),
        s_hi=s_hi,
        s_lo=s_lo,
        d_hi=d_hi,
        d_lo=d_lo,
        sport=sport[k],
        dport=dport[k],
        proto=proto[k],
        vlan=vlan[k],
        size=size[k],
        flags=flags[k],
        icmp=icmpv[k],
        malformed=malformed,
        total=n,
        total_bytes=total_bytes,
    )


def addr_bytes(fam: int, hi: int, lo: int) -> bytes:
    """Network-order address bytes (4 or 16) from the two u64 halves."""
    if fam == 4:
        return int(lo).to_bytes(4, "big")
    return int(hi).to_bytes(8, "big") + int(lo).to_bytes(8, "big")
