"""`mld-sniffer run` as a real process: FlowBatch messages on a ZeroMQ PULL socket, metrics, and a
SIGTERM that drains (flushes the table, sends, exits 0)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from helpers import REPO, free_port, wait_for
from ml_defender.v1 import flow_pb2
from services.sniffer.flows import extract_flows

pytestmark = pytest.mark.integration


def write_config(tmp: Path, pcap: Path, push_port: int, metrics_port: int, pace: str) -> Path:
    cfg = {
        "node_id": "it-sniffer",
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "capture": {"source": "pcap", "pcap_paths": [str(pcap)], "pace": pace},
        "flows": {"export_batch_size": 200, "export_interval_ms": 50},
        "output": {"endpoint": f"tcp://127.0.0.1:{push_port}", "bind": True},
    }
    path = tmp / "sniffer.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def puller() -> Iterator[tuple[zmq.Socket[bytes], int]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    port = free_port()
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield sock, port
    finally:
        sock.close(0)
        ctx.term()


def start(cfg: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.sniffer", "run", "--config", str(cfg), *extra],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def receive(sock: zmq.Socket[bytes], batches: list[flow_pb2.FlowBatch]) -> int:
    """Drain what is queued; returns the number of flows received so far."""
    while sock.poll(50):
        name, data = sock.recv_multipart()
        assert name == b"ml_defender.v1.FlowBatch"
        batches.append(flow_pb2.FlowBatch.FromString(data))
    return sum(len(b.flows) for b in batches)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_run_pushes_every_flow_with_fast_results(
    shared_pcaps: Path, tmp_path: Path, puller: tuple[zmq.Socket[bytes], int]
) -> None:
    sock, port = puller
    pcap = shared_pcaps / "attack-nmap-syn-scan.pcap"
    expected = extract_flows([pcap])
    proc = start(write_config(tmp_path, pcap, port, 0, "fast"), "--exit-when-done")
    batches: list[flow_pb2.FlowBatch] = []
    try:
        wait_for(lambda: receive(sock, batches) >= len(expected.records), timeout=60, what="all flow records")
        assert proc.wait(30) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        stop(proc)
    assert [b.sequence for b in batches] == list(range(1, len(batches) + 1))
    assert all(len(b.fast) == len(b.flows) and b.node_id == "it-sniffer" for b in batches)
    flows = [f for b in batches for f in b.flows]
    assert sorted(f.flow_id for f in flows) == sorted(r.flow_id for r in expected.records)
    assert all(f.exported_ns >= f.captured_ns > 0 for f in flows)
    rules = {r for b in batches for fr in b.fast for r in fr.rules}
    assert "port_scan" in rules
    attacker = bytes([172, 16, 0, 8])
    assert all(
        fr.score == 0
        for b in batches
        for f, fr in zip(b.flows, b.fast, strict=True)
        if f.key.src_addr != attacker
    )


def scrape(port: int) -> str:
    """The /metrics text, or '' while the endpoint is not up yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sigterm_drains_and_exits_zero(
    shared_pcaps: Path, tmp_path: Path, puller: tuple[zmq.Socket[bytes], int]
) -> None:
    """A realtime replay of a 517 s capture, stopped early: open flows are flushed and sent."""
    sock, port = puller
    mport = free_port()
    pcap = shared_pcaps / "benign-smb-windows10-session.pcap"
    proc = start(write_config(tmp_path, pcap, port, mport, "realtime"))
    batches: list[flow_pb2.FlowBatch] = []
    try:
        wait_for(
            lambda: metric(scrape(mport), "mld_sniffer_packets_total") > 0, timeout=30, what="packets counted"
        )
        text = scrape(mport)
        assert "mld_sniffer_flow_table_flows" in text and "mld_sniffer_build_info" in text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        final = next(x for x in logs if x["msg"] == "capture source finished")
        assert any(x["msg"] == "sniffer stopped" and x["reason"] == "SIGTERM" for x in logs)

        def packets_received() -> int:
            receive(sock, batches)
            return sum(f.features.bidirectional_packets for b in batches for f in b.flows)

        wait_for(
            lambda: packets_received() >= final["ip_packets"],
            timeout=10,
            what="every packet taken in to arrive inside a flow record",
        )
    finally:
        stop(proc)
    flows = [f for b in batches for f in b.flows]
    assert sum(f.features.bidirectional_packets for f in flows) == final["ip_packets"] > 0
    assert final["ip_packets"] < 125, "stopped before the capture's end"
    assert final["table_flows"] == 0, "the table was flushed"


def test_sigterm_without_a_consumer_does_not_hang(shared_pcaps: Path, tmp_path: Path) -> None:
    """Back-pressure blocks while running, but a stop gives up after the linger (counted, logged)."""
    mport = free_port()
    cfg = write_config(tmp_path, shared_pcaps / "attack-nmap-syn-scan.pcap", free_port(), mport, "fast")
    doc = json.loads(cfg.read_text())
    doc["output"]["linger_ms"] = 500
    cfg.write_text(json.dumps(doc))
    proc = start(cfg)
    try:
        wait_for(
            lambda: metric(scrape(mport), "mld_sniffer_packets_total") > 0, timeout=30, what="packets counted"
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert "flow batch dropped" in err.decode()
