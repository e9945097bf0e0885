"""XDP capture on a veth at tcpreplay's top speed: zero loss, and the sniffer's CPU per packet.

A synthetic capture (many TCP/UDP flows, mixed sizes) is replayed with `tcpreplay --topspeed`
into a veth inside a test namespace, once captured by the `afpacket` source (the baseline: every
frame crosses into Python) and once by the `xdp` source (the kernel aggregates; user space sees one
record per flow). For each: packets counted in the exported flow records vs packets sent, and the
capture process's CPU time (user + system, from getrusage) per packet counted. The ratio printed
is afpacket CPU/packet divided by xdp CPU/packet (how many times cheaper XDP is), same run. A
replay with no capture at all gives the veth's own top speed for reference (the kernel-side cost
of generic XDP shows as a lower replay rate; it is not sniffer CPU).

Needs root (network namespaces, XDP). `--quick` ends within a minute. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "privileged"))  # the namespace/capture harness of the tests
sys.path.insert(0, str(REPO))

from xdp_helpers import Capture, VethPair, eth, ipv4, tcp, udp, write_pcap  # noqa: E402


def make_pcap(path: Path, flows: int, packets_per_flow: int, seed: int = 7) -> int:
    """Interleaved flows: TCP and UDP, both directions, sizes 40..1400 bytes; returns the frame count."""
    rng = random.Random(seed)
    frames: list[bytes] = []
    payloads = [b"p" * n for n in (0, 20, 200, 600, 1300)]
    for i in range(packets_per_flow):
        for f in range(flows):
            a = f"198.18.{10 + f // 250}.{1 + f % 250}"
            b = "198.19.0.1"
            body = payloads[rng.randrange(len(payloads))]
            fwd = i % 3 != 2
            if f % 2:
                l4 = udp(20000 + f, 53, body) if fwd else udp(53, 20000 + f, body)
                frames.append(eth(ipv4(a, b, 17, l4) if fwd else ipv4(b, a, 17, l4)))
            else:
                flags = 0x02 if i == 0 else 0x18
                l4 = tcp(30000 + f, 443, flags, body) if fwd else tcp(443, 30000 + f, 0x10, body)
                frames.append(eth(ipv4(a, b, 6, l4) if fwd else ipv4(b, a, 6, l4)))
    write_pcap(path, frames, step_us=1)
    return len(frames)


def wait_settled(cap: Capture, sent: int, timeout: float) -> dict[str, Any]:
    """Poll until the capture has counted every frame or its count stops moving (loss)."""
    deadline = time.monotonic() + timeout
    last, still = -1, 0
    while True:
        st = cap.live_stats()
        if st["packets"] >= sent or time.monotonic() > deadline:
            return st
        still = still + 1 if st["packets"] == last else 0
        if still >= 10:  # 0.5 s without progress: the rest was dropped
            return st
        last = st["packets"]
        time.sleep(0.05)


def run_one(pair: VethPair, source: str, pcap: Path, sent: int, loops: int) -> dict[str, Any]:
    settings = {"flows": {"idle_timeout_s": 120}} | (
        {"xdp": {"sweep_interval_ms": 500}} if source == "xdp" else {}
    )
    cap = Capture(pair, source, settings, count_only=True)  # records counted, not printed
    try:
        cap.wait_ready(timeout=30)
        t0 = time.perf_counter()
        out = pair.replay(pcap, extra=("--topspeed", "-K", f"--loop={loops}"), timeout=300)
        replay_s = time.perf_counter() - t0
        wait_settled(cap, sent, timeout=60)
        stats = cap.stop(timeout=60)
    finally:
        cap.kill()
    rate = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
    counted = int(stats["record_packets"])
    cpu = (stats["cpu_user_s"] - cap.ready_cpu["cpu_user_s"]) + (
        stats["cpu_sys_s"] - cap.ready_cpu["cpu_sys_s"]
    )
    return {
        "source": source,
        "packets_sent": sent,
        "packets_in_records": counted,
        "packets_lost": sent - counted,
        "flows": int(stats["records"]),
        "replay_pps": float(rate.group(1)) if rate else sent / replay_s,
        "cpu_s": round(cpu, 4),
        "cpu_ns_per_packet": round(cpu * 1e9 / max(counted, 1), 2),
        "socket_drops": stats.get("socket_drops", 0),
        "ringbuf_full": stats.get("ringbuf_full", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small run (< 1 minute)")
    parser.add_argument("--flows", type=int, default=2000)
    parser.add_argument("--packets-per-flow", type=int, default=50)
    parser.add_argument("--loops", type=int, default=0, help="tcpreplay loops (default: 8 quick, 10 full)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("xdp_veth: error: needs root (network namespaces and XDP)", file=sys.stderr)
        return 2
    loops = args.loops or (8 if args.quick else 10)
    flows = min(args.flows, 500) if args.quick else args.flows
    with tempfile.TemporaryDirectory(prefix="mld-xdp-bench-") as tmp:
        pcap = Path(tmp) / "flows.pcap"
        per_loop = make_pcap(pcap, flows, args.packets_per_flow)
        sent = per_loop * loops
        pair = VethPair(mtu=9000)
        try:
            t0 = time.perf_counter()
            out = pair.replay(pcap, extra=("--topspeed", "-K", f"--loop={loops}"), timeout=300)
            rate = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
            bare_pps = float(rate.group(1)) if rate else sent / (time.perf_counter() - t0)
            base = run_one(pair, "afpacket", pcap, sent, loops)
            xdp = run_one(pair, "xdp", pcap, sent, loops)
        finally:
            pair.close()
    print(f"no capture: {bare_pps:.0f} pps (tcpreplay --topspeed into the veth)")
    for r in (base, xdp):
        print(
            f"{r['source']:>9}: sent {r['packets_sent']} at {r['replay_pps']:.0f} pps, in records "
            f"{r['packets_in_records']} (lost {r['packets_lost']}), {r['flows']} flows, "
            f"cpu {r['cpu_s']} s = {r['cpu_ns_per_packet']} ns/packet"
        )
    ratio = base["cpu_ns_per_packet"] / max(xdp["cpu_ns_per_packet"], 1e-9)
    print(f"xdp uses {ratio:.1f}x less sniffer CPU per packet than afpacket")
    result = {
        "bench": "xdp_veth",
        "quick": args.quick,
        "packets_sent": sent,
        "replay_pps_no_capture": round(bare_pps, 1),
        "replay_pps_afpacket": round(base["replay_pps"], 1),
        "replay_pps": round(xdp["replay_pps"], 1),
        "xdp_packets_in_records": xdp["packets_in_records"],
        "xdp_packets_lost": xdp["packets_lost"],
        "xdp_cpu_ns_per_packet": xdp["cpu_ns_per_packet"],
        "afpacket_packets_lost": base["packets_lost"],
        "afpacket_cpu_ns_per_packet": base["cpu_ns_per_packet"],
        "ratio_afpacket_over_xdp_cpu": round(ratio, 2),
    }
    print(json.dumps(result))
    return 0 if xdp["packets_lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
