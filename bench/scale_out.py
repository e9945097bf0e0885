"""Detector scale-out: flows/s through 1, 2 and 4 real `mld-detector run` workers fed by the
sniffer's side, in both delivery modes: plain PUSH/PULL (round-robin, no acknowledgement) and the
acknowledged work queue (libs/common/workq.py: credit-based, redelivery from dead workers). Ratios
against 1 worker and reliable against PUSH/PULL, all measured in the same run.

The bench plays the sniffer (binds the FlowBatch PUSH) and both consumers (binds the firewall and
rag-logger PULL sockets); a flow counts once its DetectionEvent reached the rag-logger socket, so
the number is end to end: transport, decode, features, four models, events, transport back.
Rows are the flows of the public captures (../shared/data/pcaps) tiled; synthetic when absent.
Workers start and load models before the clock starts (all of them connected, seen by a socket
monitor). On a 2-core machine expect the ratio to flatten at 2 workers: the bench process shares
those cores. Last line: one JSON object.

    .venv/bin/python bench/scale_out.py [--quick] [--workers 1,2,4] [--flows 60000] [--modes push,reliable]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from libs.common.workq import WorkSender  # noqa: E402
from libs.common.zmqio import ReliableSettings, SocketSettings  # noqa: E402
from libs.lab.multi import Proc, detector_doc, detector_proc, sigterm_all  # noqa: E402
from ml_defender.v1 import flow_pb2  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "pcaps"
BATCH = 256


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(proc: Proc) -> float:
    """User + system CPU seconds of a worker so far (/proc), robust to other load on the host."""
    assert proc.popen is not None
    fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flow_records(limit: int) -> list[flow_pb2.FlowRecord]:
    recs: list[flow_pb2.FlowRecord] = []
    if SHARED.is_dir():
        from services.sniffer.flows import extract_flows

        for f in sorted(SHARED.glob("*.pcap*")):
            recs.extend(extract_flows([f]).records)
            if len(recs) >= limit:
                break
    if not recs:  # synthetic: distinct sources and ports, some packets and bytes
        for i in range(2000):
            r = flow_pb2.FlowRecord(flow_id=i + 1, node_id="bench")
            r.key.src_addr = bytes([198, 18, i // 256 % 256, i % 256])
            r.key.dst_addr = bytes([198, 19, 0, 1])
            r.key.src_port, r.key.dst_port, r.key.protocol = 40000 + i % 20000, 80 + i % 7, 6
            recs.append(r)
    return recs


def batches(recs: list[flow_pb2.FlowRecord], flows: int) -> list[bytes]:
    """Serialized FlowBatch messages of BATCH flows, `flows` in all (records tiled)."""
    out = []
    for seq, lo in enumerate(range(0, flows, BATCH)):
        b = flow_pb2.FlowBatch(node_id="bench", sequence=seq)
        for j in range(lo, min(lo + BATCH, flows)):
            b.flows.append(recs[j % len(recs)])
        out.append(b.SerializeToString())
    return out


# Defaults, with a window of two full model calls (batch.max_flows 4096 / 256 flows a batch x 2):
# a worker always has its next call's flows queued while its acknowledgements are on their way.
RELIABLE = ReliableSettings(window=32)


def run_workers(
    n: int, msgs: list[bytes], flows: int, run_dir: Path, timeout_s: float, mode: str = "push"
) -> dict[str, float]:
    """flows/s and wall seconds with `n` workers; every flow's event must arrive."""
    ctx = zmq.Context()
    in_ep, fw_ep, rag_ep = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    sender: WorkSender | None = None
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 8  # small queues: a busy worker's share goes to the others
    mon = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    if mode == "reliable":  # the sniffer's own sender; the PUSH above stays unbound and idle
        settings = SocketSettings(
            endpoint=in_ep, bind=True, hwm=100_000, send_timeout_ms=-1, reliable=RELIABLE
        )
        sender = WorkSender("bench_scale", settings, ctx)
    else:
        push.bind(in_ep)
    sinks = []
    for ep in (fw_ep, rag_ep):
        s = ctx.socket(zmq.PULL)
        s.rcvhwm = 100_000
        s.bind(ep)
        sinks.append(s)
    procs = [
        detector_proc(
            f"scale-{mode}-{n}-det-{i}",
            detector_doc(
                f"det-{i}",
                in_ep,
                rag_ep,
                firewall_ep=fw_ep,
                reliable=RELIABLE.model_dump() if mode == "reliable" else None,
            ),
            run_dir,
        )
        for i in range(n)
    ]
    counts = [0, 0]
    done = threading.Event()

    def drain() -> None:
        poller = zmq.Poller()
        for s in sinks:
            poller.register(s, zmq.POLLIN)
        while not done.is_set() and counts[1] < flows:
            for s, _ in poller.poll(100):
                i = sinks.index(s)
                while True:
                    try:
                        s.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    counts[i] += 1

    try:
        for p in procs:
            p.start()
        connected = 0
        deadline = time.monotonic() + 120
        while connected < n:  # every worker loaded its models and connected (announced itself)
            if sender is not None:
                time.sleep(0.1)
                connected = sender.workers()
            elif mon.poll(500):
                recv_monitor_message(mon)
                connected += 1
            for p in procs:
                if not p.running():
                    raise SystemExit(f"worker {p.name} exited; see {p.log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"only {connected}/{n} workers connected in 120 s")
        objs = [flow_pb2.FlowBatch.FromString(m) for m in msgs]  # the sniffer holds messages, not bytes
        t_drain = threading.Thread(target=drain, daemon=True)
        cpu0 = sum(cpu_s(p) for p in procs)
        t0 = time.perf_counter()
        t_drain.start()
        for b in objs:  # as the sniffer does: Pusher.send or WorkSender.send serializes
            if sender is not None:
                sender.send(b)
            else:
                push.send_multipart([b"ml_defender.v1.FlowBatch", b.SerializeToString()])
        t_drain.join(timeout_s)
        wall = time.perf_counter() - t0
        cpu = sum(cpu_s(p) for p in procs) - cpu0
        done.set()
        if counts[1] < flows:
            raise SystemExit(f"{n} workers: only {counts[1]}/{flows} events in {timeout_s:.0f} s")
        return {"flows_per_s": flows / wall, "wall_s": wall, "flows_per_worker_cpu_s": flows / max(cpu, 1e-9)}
    finally:
        done.set()
        sigterm_all(procs)
        push.disable_monitor()
        mon.close(0)
        push.close(0)
        if sender is not None:
            sender.close()
        for s in sinks:
            s.close(0)
        ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer flows; ends within a minute")
    ap.add_argument(
        "--workers", default="1,2,4", help="comma-separated worker counts; the first is the baseline"
    )
    ap.add_argument("--flows", type=int, default=None, help="flows per measurement")
    ap.add_argument("--modes", default="push,reliable", help="delivery modes; reliable is compared with push")
    args = ap.parse_args()
    t_start = time.monotonic()
    counts = [int(x) for x in args.workers.split(",")]
    modes = args.modes.split(",")
    flows = args.flows or (8_000 if args.quick else 60_000)
    recs = flow_records(20_000)
    msgs = batches(recs, flows)
    # the load average says how much of the machine the workers could have had
    result: dict[str, object] = {
        "flows": flows,
        "batch_flows": BATCH,
        "cpu_cores": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    base: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mld-scale-") as tmp:
        for n in counts:
            per_mode: dict[str, float] = {}
            for mode in modes:  # interleaved, so both modes see the same load on the host
                r = run_workers(n, msgs, flows, Path(tmp), timeout_s=300, mode=mode)
                per_mode[mode] = r["flows_per_s"]
                base.setdefault(mode, r["flows_per_s"])
                ratio = r["flows_per_s"] / base[mode]
                print(
                    f"{mode:8} {n} worker(s): {r['flows_per_s']:,.0f} flows/s ({r['wall_s']:.2f} s) "
                    f"ratio vs {counts[0]}: {ratio:.2f}; "
                    f"{r['flows_per_worker_cpu_s']:,.0f} flows per worker CPU second"
                )
                result[f"{mode}_workers_{n}_flows_per_s"] = round(r["flows_per_s"])
                result[f"{mode}_workers_{n}_flows_per_worker_cpu_s"] = round(r["flows_per_worker_cpu_s"])
                result[f"{mode}_workers_{n}_ratio_vs_{counts[0]}"] = round(ratio, 3)
            if "push" in per_mode and "reliable" in per_mode:
                rel = per_mode["reliable"] / per_mode["push"]
                print(f"reliable vs push, {n} worker(s): {rel:.2f}")
                result[f"reliable_vs_push_workers_{n}_ratio"] = round(rel, 3)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["bench_wall_s"] = round(time.monotonic() - t_start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
