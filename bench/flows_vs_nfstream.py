#!/usr/bin/env python3
"""pcap -> flow records: packets per second of the sniffer's pcap path against NFStream, same file,
same run, one core each.

The input is built in a temporary directory (never committed): every shared capture is written
`--copies` times into one classic pcap, each copy shifted in time by its span + 200 s so copies
do not merge into one flow. Both tools run with equivalent settings: statistical features on,
IP-layer sizes (NFStream accounting_mode=1), no DPI (n_dissections=0), one meter process.
The flow and packet counts of both are compared; a mismatch fails the run.

    .venv/bin/python bench/flows_vs_nfstream.py [--quick] [--copies N] [--repeat N]

The last line is one JSON object (units in key names).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.sniffer.flows import extract_flows  # noqa: E402
from services.sniffer.pcapfile import read_capture  # noqa: E402

SHARED = Path(os.environ.get("MLD_SHARED_PCAPS", REPO.parent / "shared" / "data" / "pcaps"))


def build_pcap(out: Path, copies: int, names: list[str] | None = None) -> tuple[int, int]:
    """Write the shared captures (all, or `names`) `copies` times into one microsecond pcap;
    returns (packets, bytes)."""
    caps = [read_capture(p) for p in sorted(SHARED.glob("*.pcap*")) if not names or p.name in names]
    if not caps:
        raise SystemExit(f"no captures in {SHARED} (set MLD_SHARED_PCAPS)")
    packets = 0
    shift_ns = 1_600_000_000 * 10**9  # start in 2020; each piece moves later
    rec = struct.Struct("<IIII")
    with out.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for _ in range(copies):
            for cap in caps:
                base = int(cap.ts_ns[0])
                data = cap.data
                parts = []
                for ts, off, ln in zip(
                    cap.ts_ns.tolist(), cap.offsets.tolist(), cap.caplens.tolist(), strict=True
                ):
                    t = ts - base + shift_ns
                    parts.append(rec.pack(t // 10**9, (t % 10**9) // 1000, ln, ln))
                    parts.append(data[off : off + ln])
                f.write(b"".join(parts))
                packets += cap.packets
                shift_ns += int(cap.ts_ns[-1] - cap.ts_ns[0]) + 200 * 10**9
    return packets, out.stat().st_size


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (NFStream meters run as children)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_ours(path: Path) -> tuple[float, float, int, int, int]:
    """(wall s, cpu s, packets read, flows, packets inside flows)."""
    c0, t0 = _cpu(), time.perf_counter()
    res = extract_flows([path])
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    if res.error:
        raise SystemExit(f"sniffer failed: {res.error.message}")
    in_flows = sum(r.features.bidirectional_packets for r in res.records)
    return dt, cpu, int(res.stats["packets"]), len(res.records), in_flows


def run_nfstream(path: Path) -> tuple[float, float, int, int]:
    """(wall s, cpu s, packets inside flows, flows)."""
    from nfstream import NFStreamer

    c0, t0 = _cpu(), time.perf_counter()
    flows = 0
    packets = 0
    streamer = NFStreamer(
        source=str(path), statistical_analysis=True, n_dissections=0, accounting_mode=1, n_meters=1
    )
    for flow in streamer:
        flows += 1
        packets += flow.bidirectional_packets
    return time.perf_counter() - t0, _cpu() - c0, packets, flows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small input, two repetitions (< 1 minute)")
    ap.add_argument(
        "--copies", type=int, default=None, help="copies of the shared captures (default 60, quick 8)"
    )
    ap.add_argument(
        "--repeat", type=int, default=None, help="runs of each tool; the best is kept (default 3)"
    )
    ap.add_argument(
        "--captures", default="", help="comma-separated shared capture names to use (default: all ten)"
    )
    args = ap.parse_args()
    names = [x for x in args.captures.split(",") if x]
    copies = args.copies or (8 if args.quick else 60)
    repeat = args.repeat or (2 if args.quick else 3)
    try:
        import nfstream  # noqa: F401
    except ImportError:
        raise SystemExit("nfstream is not installed: .venv/bin/pip install -e '.[bench]'") from None
    with tempfile.TemporaryDirectory(prefix="mld-bench-flows-") as tmp:
        path = Path(tmp) / "mixed.pcap"
        n_packets, n_bytes = build_pcap(path, copies, names)
        what = ", ".join(names) if names else str(SHARED)
        print(f"input: {n_packets} packets, {n_bytes / 1e6:.1f} MB ({copies} copies of {what})")
        ours, theirs = [], []
        for _ in range(repeat):  # interleaved, so both see the same load on a shared host
            ours.append(run_ours(path))
            theirs.append(run_nfstream(path))
    wall, cpu, our_packets, our_flows, our_flow_packets = min(ours)
    nf_wall, nf_cpu, nf_packets, nf_flows = min(theirs)
    pps = n_packets / wall
    nf_pps = n_packets / nf_wall
    print(f"sniffer pcap path: {wall:.3f} s ({cpu:.3f} s CPU), {pps:,.0f} packets/s, {our_flows} flows")
    print(
        f"nfstream         : {nf_wall:.3f} s ({nf_cpu:.3f} s CPU), {nf_pps:,.0f} packets/s, {nf_flows} flows"
    )
    agree = our_flows == nf_flows and our_packets == n_packets and nf_packets == our_flow_packets
    print(f"ratio: {pps / nf_pps:.2f}x NFStream (CPU time: {nf_cpu / cpu:.2f}x); counts agree: {agree}")
    print(
        json.dumps(
            {
                "packets": n_packets,
                "input_bytes": n_bytes,
                "flows": our_flows,
                "nfstream_flows": nf_flows,
                "counts_agree": agree,
                "seconds": round(wall, 4),
                "cpu_seconds": round(cpu, 4),
                "nfstream_seconds": round(nf_wall, 4),
                "nfstream_cpu_seconds": round(nf_cpu, 4),
                "packets_per_s": round(pps, 1),
                "nfstream_packets_per_s": round(nf_pps, 1),
                "ratio_vs_nfstream": round(pps / nf_pps, 3),
                "cpu_ratio_vs_nfstream": round(nf_cpu / cpu, 3),
            }
        )
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
