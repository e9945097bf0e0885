"""The XDP path's feature math (aggregated counters -> 53 features) equals the flow table's.

The kernel keeps sums, sums of squares, min/max and first/last per direction; user space turns
them into features in `sources/xdp.py`. Here a model of the kernel's accumulation is fed the same
packets as `FlowTable`, and every feature — timing ones included, which the privileged parity test
cannot compare after a top-speed replay — must agree.
"""

from __future__ import annotations

import ctypes
import itertools
import random
import struct

import numpy as np
import pytest

from services.sniffer import libbpf
from services.sniffer.flows import FlowTable
from services.sniffer.sources.xdp import (
    Direction,
    FlowCounters,
    Piat,
    counters_from_kernel,
    feature_columns,
    features_from_counters,
    records_from_arrays,
)

pytestmark = pytest.mark.unit

A, B = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])


def frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0) + b"z" * payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src, dst) + tcp
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip


def piat_of(times: list[int]) -> Piat:
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if not gaps:
        return Piat()
    return Piat(len(gaps), min(gaps), max(gaps), sum(gaps), sum(g * g for g in gaps))


def kernel_model(packets: list[tuple[int, int, int, int]]) -> FlowCounters:
    """What the XDP program accumulates for one flow: (ts_ns, direction, ip_size, tcp_flags)."""
    dirs = []
    for d in (0, 1):
        mine = [p for p in packets if p[1] == d]
        sizes = [p[2] for p in mine]
        times = [p[0] for p in mine]
        bits = (0x02, 0x10, 0x08, 0x04, 0x01, 0x20)
        flags = tuple(sum(1 for p in mine if p[3] & bit) for bit in bits)
        dirs.append(
            Direction(
                packets=len(mine),
                bytes=sum(sizes),
                ps_min=min(sizes, default=0),
                ps_max=max(sizes, default=0),
                ps_sumsq=sum(s * s for s in sizes),
                first_ns=min(times, default=0),
                last_ns=max(times, default=0),
                piat=piat_of(times),
                flags=flags,  # type: ignore[arg-type]
            )
        )
    times = [p[0] for p in packets]
    return FlowCounters(A, B, 40000, 443, 6, 0, times[0], times[-1], piat_of(times), (dirs[0], dirs[1]))


@pytest.mark.parametrize("seed", range(6))
def test_features_match_flow_table(seed: int) -> None:
    rng = random.Random(seed)
    t = 1_700_000_000_000_000_000
    packets: list[tuple[int, int, int, int]] = []
    frames: list[bytes] = []
    stamps: list[int] = []
    for i in range(rng.randint(1, 40)):
        d = 0 if i == 0 else rng.randint(0, 1)
        flags = 0x02 if i == 0 else rng.choice((0x10, 0x18, 0x10 | 0x20))
        payload = rng.choice((0, 1, 100, 1400))
        t += rng.randint(1, 3_000_000_000)  # up to 3 s apart: piat^2 needs more than 64 bits of ns
        f = frame(A, B, 40000, 443, flags, payload) if d == 0 else frame(B, A, 443, 40000, flags, payload)
        frames.append(f)
        stamps.append(t)
        packets.append((t, d, len(f) - 14, flags))
    table = FlowTable()
    table.add_frames(stamps, frames)
    (rec,) = table.flush()
    want = {f.name: getattr(rec.features, f.name) for f in rec.features.DESCRIPTOR.fields}
    got = features_from_counters(kernel_model(packets))
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


def random_kernel_values(
    rng: random.Random, n: int
) -> tuple[ctypes.Array[libbpf.FlowKey], ctypes.Array[libbpf.FlowValue]]:
    keys = (libbpf.FlowKey * n)()
    vals = (libbpf.FlowValue * n)()
    for i in range(n):
        k, v = keys[i], vals[i]
        k.ip_version = rng.choice((4, 6))
        k.protocol = rng.choice((6, 17, 1, 58, 47))
        for j in range(16 if k.ip_version == 6 else 4):
            k.src_addr[j], k.dst_addr[j] = rng.randrange(256), rng.randrange(256)
        k.src_port, k.dst_port, k.vlan_id = rng.randrange(65536), rng.randrange(65536), rng.randrange(4096)
        v.icmp = rng.randrange(65536)
        t0 = rng.randrange(1 << 50)
        v.first_ns, v.last_ns = t0, t0 + rng.randrange(1 << 40)
        total = 0
        for d in range(2):
            dr = v.dir[d]
            dr.packets = rng.choice((0, 1, 2, rng.randrange(1, 10_000)))
            total += dr.packets
            if dr.packets:
                dr.ps_min, dr.ps_max = rng.randrange(20, 100), rng.randrange(100, 9000)
                dr.bytes = dr.packets * rng.randrange(dr.ps_min, dr.ps_max + 1)
                dr.ps_sumsq = dr.bytes * dr.ps_max
                dr.first_ns, dr.last_ns = t0 + rng.randrange(1000), t0 + rng.randrange(1 << 40)
                dr.piat.min_ns, dr.piat.max_ns = rng.randrange(1000), rng.randrange(1 << 36)
                dr.piat.sum_ns = dr.piat.max_ns * dr.packets
                dr.piat.sumsq_lo, dr.piat.sumsq_hi = (
                    rng.randrange(1 << 64),
                    rng.choice((0, 0, rng.randrange(1 << 20))),
                )
                dr.syn, dr.ack, dr.psh = rng.randrange(3), dr.packets, rng.randrange(dr.packets + 1)
        v.piat.min_ns, v.piat.max_ns, v.piat.sum_ns = 5, 1 << 34, (1 << 34) * max(total, 1)
        v.piat.sumsq_lo, v.piat.sumsq_hi = rng.randrange(1 << 64), rng.randrange(1 << 30)
    return keys, vals


def test_vectorised_features_equal_the_reference() -> None:
    """feature_columns / records_from_arrays (the fast path) == features_from_counters per row."""
    rng = random.Random(5)
    n = 300
    keys, vals = random_kernel_values(rng, n)
    k = np.frombuffer(memoryview(keys), dtype=np.dtype(libbpf.FlowKey), count=n)
    v = np.frombuffer(memoryview(vals), dtype=np.dtype(libbpf.FlowValue), count=n)
    cols = feature_columns(v)
    recs = records_from_arrays(k, v, [1] * n, 0, "node", "eth0")
    for i in range(n):
        want = features_from_counters(counters_from_kernel(keys[i], vals[i]))
        for name, value in want.items():
            got = getattr(recs[i].features, name)
            assert got == pytest.approx(value, rel=1e-12, abs=1e-12), (i, name)
            if name in cols:
                assert float(cols[name][i]) == pytest.approx(value, rel=1e-12, abs=1e-12), (i, name)
        c = counters_from_kernel(keys[i], vals[i])
        assert (recs[i].key.src_addr, recs[i].key.src_port, recs[i].key.dst_port) == (
            c.src_addr,
            c.src_port,
            c.dst_port,
        )
