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


def build_pcap(out: Path, copies: int) -> tuple[int, int]:
    """Write the shared captures `copies` times into one microsecond pcap; returns (packets, bytes)."""
    caps = [read_capture(p) for p in sorted(SHARED.glob("*.pcap*"))]
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


def run_ours(path: Path) -> tuple[float, int, int, int]:
    """(seconds, packets read, flows, packets inside flows)."""
    t0 = time.perf_counter()
    res = extract_flows([path])
    dt = time.perf_counter() - t0
    if res.error:
        raise SystemExit(f"sniffer failed: {res.error.message}")
    in_flows = sum(r.features.bidirectional_packets for r in res.records)
    return dt, int(res.stats["packets"]), len(res.records), in_flows


def run_nfstream(path: Path) -> tuple[float, int, int]:
    from nfstream import NFStreamer

    t0 = time.perf_counter()
    flows = 0
    packets = 0
    streamer = NFStreamer(
        source=str(path), statistical_analysis=True, n_dissections=0, accounting_mode=1, n_meters=1
    )
    for flow in streamer:
        flows += 1
        packets += flow.bidirectional_packets
    return time.perf_counter() - t0, packets, flows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small input, one repetition (< 1 minute)")
    ap.add_argument(
        "--copies", type=int, default=None, help="copies of the shared captures (default 60, quick 8)"
    )
    ap.add_argument(
        "--repeat", type=int, default=None, help="runs of each tool; the best is kept (default 3)"
    )
    args = ap.parse_args()
    copies = args.copies or (8 if args.quick else 60)
    repeat = args.repeat or (1 if args.quick else 3)
    try:
        import nfstream  # noqa: F401
    except ImportError:
        raise SystemExit("nfstream is not installed: .venv/bin/pip install -e '.[bench]'") from None
    with tempfile.TemporaryDirectory(prefix="mld-bench-flows-") as tmp:
        path = Path(tmp) / "mixed.pcap"
        n_packets, n_bytes = build_pcap(path, copies)
        print(f"input: {n_packets} packets, {n_bytes / 1e6:.1f} MB ({copies} copies of {SHARED})")
        ours = [run_ours(path) for _ in range(repeat)]
        theirs = [run_nfstream(path) for _ in range(repeat)]
    best_ours = min(ours)
    best_theirs = min(theirs)
    _, our_packets, our_flows, our_flow_packets = best_ours
    _, nf_packets, nf_flows = best_theirs
    pps = n_packets / best_ours[0]
    nf_pps = n_packets / best_theirs[0]
    print(f"sniffer pcap path: {best_ours[0]:.3f} s, {pps:,.0f} packets/s, {our_flows} flows")
    print(f"nfstream         : {best_theirs[0]:.3f} s, {nf_pps:,.0f} packets/s, {nf_flows} flows")
    agree = our_flows == nf_flows and our_packets == n_packets and nf_packets == our_flow_packets
    print(f"ratio: {pps / nf_pps:.2f}x NFStream; counts agree: {agree}")
    print(
        json.dumps(
            {
                "packets": n_packets,
                "input_bytes": n_bytes,
                "flows": our_flows,
                "nfstream_flows": nf_flows,
                "counts_agree": agree,
                "seconds": round(best_ours[0], 4),
                "nfstream_seconds": round(best_theirs[0], 4),
                "packets_per_s": round(pps, 1),
                "nfstream_packets_per_s": round(nf_pps, 1),
                "ratio_vs_nfstream": round(pps / nf_pps, 3),
            }
        )
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
