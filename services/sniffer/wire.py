"""FlowRecords for many flows at once: Community IDs, ids and protobuf bytes built with NumPy.

Exported flows can outnumber packets by one to three in scans, so per-flow Python work (hashing,
base64, building 60-field messages) would dominate the pcap path. Here every step is an array
operation over all flows of an export: SHA-1 of the Community ID tuple (each is a single 64-byte
block), base64, a 64-bit flow id, and the protobuf wire bytes in a fixed layout per address
family (varints padded to a fixed width, which every protobuf parser accepts). The records are
then parsed in C from one FlowBatch buffer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_defender.v1 import flow_pb2

U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
Arr = np.ndarray[Any, Any]

_PORTED_CID = (1, 6, 17, 58, 132)
_ICMP_PAIRS = {
    1: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 10: 9, 9: 10},
    58: {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130},
}
_PAIR_TABLE = {p: np.full(256, -1, dtype=np.int64) for p in _ICMP_PAIRS}
for _p, _pairs in _ICMP_PAIRS.items():
    for _a, _b in _pairs.items():
        _PAIR_TABLE[_p][_a] = _b
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", dtype=np.uint8)
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
_VECTOR_SHA1_MIN = 64  # below this many flows per family, hashlib per flow is faster


def addr_matrix(fam: Arr, hi: U64, lo: U64, family: int) -> U8:
    """Network-order address bytes of rows of one family: (n, 4) or (n, 16)."""
    lo_b = lo.astype(">u8").view(np.uint8).reshape(-1, 8)
    if family == 4:
        return np.ascontiguousarray(lo_b[:, 4:])
    hi_b = hi.astype(">u8").view(np.uint8).reshape(-1, 8)
    return np.ascontiguousarray(np.concatenate([hi_b, lo_b], axis=1))


def _rotl(x: U32, s: int) -> U32:
    return (x << np.uint32(s)) | (x >> np.uint32(32 - s))


def sha1_blocks(block: U8) -> U8:
    """SHA-1 of messages already padded to one 64-byte block each: (n, 64) -> (n, 20)."""
    n = block.shape[0]
    w = np.empty((80, n), dtype=np.uint32)
    w[:16] = np.ascontiguousarray(block).view(">u4").reshape(n, 16).T.astype(np.uint32)
    for t in range(16, 80):
        w[t] = _rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1)
    h = [
        np.uint32(0x67452301),
        np.uint32(0xEFCDAB89),
        np.uint32(0x98BADCFE),
        np.uint32(0x10325476),
        np.uint32(0xC3D2E1F0),
    ]
    a, b, c, d, e = (np.full(n, v, dtype=np.uint32) for v in h)
    with np.errstate(over="ignore"):
        for t in range(80):
            if t < 20:
                f = (b & c) | (~b & d)
                k = np.uint32(0x5A827999)
            elif t < 40:
                f = b ^ c ^ d
                k = np.uint32(0x6ED9EBA1)
            elif t < 60:
                f = (b & c) | (b & d) | (c & d)
                k = np.uint32(0x8F1BBCDC)
            else:
                f = b ^ c ^ d
                k = np.uint32(0xCA62C1D6)
            tmp = _rotl(a, 5) + f + e + k + w[t]
            e, d, c, b, a = d, c, _rotl(b, 30), a, tmp
        out = np.stack([a + h[0], b + h[1], c + h[2], d + h[3], e + h[4]], axis=1)
    return np.ascontiguousarray(out.astype(">u4")).view(np.uint8).reshape(n, 20)


def _b64_20(digest: U8) -> U8:
    """Base64 of 20-byte digests: (n, 20) -> (n, 28) ASCII, '=' padded."""
    n = digest.shape[0]
    d = np.concatenate([digest, np.zeros((n, 1), dtype=np.uint8)], axis=1).astype(np.uint32)
    g = d.reshape(n, 7, 3)
    v = (g[:, :, 0] << 16) | (g[:, :, 1] << 8) | g[:, :, 2]
    idx = np.stack([(v >> 18) & 63, (v >> 12) & 63, (v >> 6) & 63, v & 63], axis=2).reshape(n, 28)
    out = _B64[idx]
    out[:, 27] = ord("=")
    return out


def community_ids(
    fam: Arr, src: dict[int, U8], dst: dict[int, U8], sport: Arr, dport: Arr, proto: Arr
) -> tuple[U8, U8]:
    """Community ID v1 strings ("1:" + base64, 30 bytes) and SHA-1 digests of n flows.

    `src`/`dst` hold the address matrices per family (rows in the order of that family's rows).
    The same result as libs.common.events.community_id (a unit test compares them).
    """
    n = len(fam)
    sport = sport.astype(np.int64).copy()
    dport = dport.astype(np.int64).copy()
    one_way = np.zeros(n, dtype=bool)
    for p, table in _PAIR_TABLE.items():
        m = proto == p
        if m.any():
            mapped = table[np.clip(sport[m], 0, 255)]
            ow = mapped < 0
            one_way[m] = ow
            dport[m] = np.where(ow, dport[m], mapped)
    ported = np.isin(proto, _PORTED_CID)
    cid = np.empty((n, 30), dtype=np.uint8)
    digests = np.empty((n, 20), dtype=np.uint8)
    for family, alen in ((4, 4), (6, 16)):
        rows = np.flatnonzero(fam == family)
        if not len(rows):
            continue
        s, d = src[family], dst[family]
        sp, dp = sport[rows], dport[rows]
        # order (address, port) pairs as the spec does: bytes compare = lexicographic on columns
        diff = s.astype(np.int16) - d.astype(np.int16)
        nz = diff != 0
        first = np.argmax(nz, axis=1)
        addr_cmp = np.where(nz.any(axis=1), np.sign(diff[np.arange(len(rows)), first]), 0)
        greater = (addr_cmp > 0) | ((addr_cmp == 0) & (sp > dp))
        swap = greater & ~one_way[rows]
        a = np.where(swap[:, None], d, s)
        b = np.where(swap[:, None], s, d)
        pa = np.where(swap, dp, sp)
        pb = np.where(swap, sp, dp)
        has_ports = ported[rows]
        mlen = 2 + 2 * alen + 2 + np.where(has_ports, 4, 0)
        block = np.zeros((len(rows), 64), dtype=np.uint8)
        block[:, 2 : 2 + alen] = a
        block[:, 2 + alen : 2 + 2 * alen] = b
        block[:, 2 + 2 * alen] = proto[rows]
        o = 4 + 2 * alen
        block[:, o] = np.where(has_ports, pa >> 8, 0x80)
        block[:, o + 1] = np.where(has_ports, pa & 0xFF, 0)
        block[:, o + 2] = np.where(has_ports, pb >> 8, 0)
        block[:, o + 3] = np.where(has_ports, pb & 0xFF, 0)
        if o + 4 < 56:
            block[:, o + 4] = np.where(has_ports, 0x80, 0)
        bits = (mlen * 8).astype(">u8").view(np.uint8).reshape(-1, 8)
        block[:, 56:] = bits
        if len(rows) >= _VECTOR_SHA1_MIN:
            dig = sha1_blocks(block)
        else:  # a few flows: hashlib beats 80 rounds of tiny array operations
            dig = np.frombuffer(
                b"".join(
                    hashlib.sha1(bytes(blk[:ln])).digest()
                    for blk, ln in zip(block, mlen.tolist(), strict=True)
                ),
                dtype=np.uint8,
            ).reshape(len(rows), 20)
        digests[rows] = dig
        cid[rows, 0] = ord("1")
        cid[rows, 1] = ord(":")
        cid[rows, 2:] = _b64_20(dig)
    return cid, digests


def splitmix64(x: U64) -> U64:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def varints(x: Arr, width: int) -> U8:
    """Unsigned values as fixed-width (over-long, still valid) protobuf varints: (n, width)."""
    u = np.asarray(x).astype(np.int64).astype(np.uint64)
    v = ((u[..., None] >> _SHIFTS[:width]) & np.uint64(0x7F)).astype(np.uint8)
    v[..., : width - 1] |= 0x80
    return v


def tag(number: int, wire_type: int) -> bytes:
    v = number << 3 | wire_type
    return bytes([v]) if v < 128 else bytes([(v & 0x7F) | 0x80, v >> 7])


def length_prefix(number: int, payload_len: int) -> bytes:
    out = bytearray(tag(number, 2))
    v = payload_len
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


_FEATURE_FIELDS = flow_pb2.FlowFeatures.DESCRIPTOR.fields


def _feature_layout() -> tuple[list[str], list[str], U8, Arr, Arr, Arr, int]:
    """Where each byte of a serialized FlowFeatures goes: tags, varint and double columns."""
    ints = [fd.name for fd in _FEATURE_FIELDS if fd.type != fd.TYPE_DOUBLE]
    dbls = [fd.name for fd in _FEATURE_FIELDS if fd.type == fd.TYPE_DOUBLE]
    tag_bytes: list[int] = []
    tag_pos: list[int] = []
    int_pos: list[int] = []
    dbl_pos: list[int] = []
    pos = 0
    for fd in _FEATURE_FIELDS:
        is_double = fd.type == fd.TYPE_DOUBLE
        t = tag(fd.number, 1 if is_double else 0)
        tag_bytes.extend(t)
        tag_pos.extend(range(pos, pos + len(t)))
        pos += len(t)
        width = 8
        (dbl_pos if is_double else int_pos).extend(range(pos, pos + width))
        pos += width
    return (
        ints,
        dbls,
        np.array(tag_bytes, dtype=np.uint8),
        np.array(tag_pos),
        np.array(int_pos),
        np.array(dbl_pos),
        pos,
    )


_LAYOUT = _feature_layout()


def features_matrix(feats: dict[str, Arr], n: int) -> U8:
    """FlowFeatures of n flows as (n, width) wire bytes, every field present, one layout.

    Counters fit in 56 bits, so their varints are 8 bytes; doubles are 8 bytes little endian.
    """
    ints, dbls, tag_bytes, tag_pos, int_pos, dbl_pos, width = _LAYOUT
    mat = np.empty((n, width), dtype=np.uint8)
    mat[:, tag_pos] = tag_bytes
    mat[:, int_pos] = varints(np.stack([np.asarray(feats[name]) for name in ints], axis=1), 8).reshape(n, -1)
    dv = np.stack([np.asarray(feats[name], dtype="<f8") for name in dbls], axis=1)
    mat[:, dbl_pos] = np.ascontiguousarray(dv).view(np.uint8).reshape(n, -1)
    return mat


def const(b: bytes, n: int) -> U8:
    return np.broadcast_to(np.frombuffer(b, dtype=np.uint8), (n, len(b)))


def records(
    *,
    fam: Arr,
    s_hi: U64,
    s_lo: U64,
    d_hi: U64,
    d_lo: U64,
    sport: Arr,
    dport: Arr,
    proto: Arr,
    vlan: Arr,
    first_ns: Arr,
    last_ns: Arr,
    reasons: Arr,
    captured_ns: Arr,
    feats: dict[str, Arr],
    node_id: str,
    interface: str,
) -> list[flow_pb2.FlowRecord]:
    """Build n FlowRecords (keys oriented initiator -> responder, ports already as recorded)."""
    n = len(fam)
    if n == 0:
        return []
    src: dict[int, U8] = {}
    dst: dict[int, U8] = {}
    for family in (4, 6):
        rows = fam == family
        src[family] = addr_matrix(fam[rows], s_hi[rows], s_lo[rows], family)
        dst[family] = addr_matrix(fam[rows], d_hi[rows], d_lo[rows], family)
    cid, digests = community_ids(fam, src, dst, sport, dport, proto)
    word = np.ascontiguousarray(digests[:, :8]).view(">u8").reshape(n).astype(np.uint64)
    mix = splitmix64(
        np.asarray(first_ns).astype(np.int64).astype(np.uint64) ^ (vlan.astype(np.uint64) << np.uint64(48))
    )
    flow_id = splitmix64(word ^ mix) & np.uint64((1 << 63) - 1)
    feat = features_matrix(feats, n)
    node = node_id.encode()
    iface = interface.encode()
    blobs: dict[int, tuple[bytes, int, Arr]] = {}
    for family, alen in ((4, 4), (6, 16)):
        idx = np.flatnonzero(fam == family)
        m = len(idx)
        if not m:
            continue
        key = [
            const(length_prefix(1, alen), m), src[family],
            const(length_prefix(2, alen), m), dst[family],
            const(tag(3, 0), m), varints(sport[idx], 3),
            const(tag(4, 0), m), varints(dport[idx], 3),
            const(tag(5, 0), m), varints(proto[idx], 2),
            const(tag(6, 0), m), varints(vlan[idx], 2),
        ]  # fmt: skip
        key_len = sum(p.shape[1] for p in key)
        body = [
            const(tag(1, 0), m), varints(flow_id[idx], 10),
            const(length_prefix(2, 30), m), cid[idx],
            const(length_prefix(3, key_len), m), *key,
            const(tag(4, 0), m), varints(np.asarray(first_ns)[idx], 10),
            const(tag(5, 0), m), varints(np.asarray(last_ns)[idx], 10),
            const(tag(6, 0), m), varints(np.asarray(reasons)[idx], 1),
            const(length_prefix(7, len(node)) + node, m),
            const(length_prefix(8, len(iface)) + iface, m),
            const(length_prefix(9, feat.shape[1]), m), feat[idx],
            const(tag(10, 0), m), varints(np.asarray(captured_ns)[idx], 10),
        ]  # fmt: skip
        rec_len = sum(p.shape[1] for p in body)
        mat = np.concatenate([const(length_prefix(1, rec_len), m), *body], axis=1)  # FlowBatch.flows
        blobs[family] = (np.ascontiguousarray(mat).tobytes(), mat.shape[1], idx)
    if len(blobs) == 1:
        return list(flow_pb2.FlowBatch.FromString(next(iter(blobs.values()))[0]).flows)
    out: list[flow_pb2.FlowRecord] = [flow_pb2.FlowRecord()] * n  # both families: back in order
    for blob, _, idx in blobs.values():
        for i, rec in zip(idx.tolist(), flow_pb2.FlowBatch.FromString(blob).flows, strict=True):
            out[i] = rec
    return out
