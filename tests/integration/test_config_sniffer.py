"""A running `mld-sniffer run --etcd` on live configuration: an `etcdctl put` of a fast-detector
setting changes the scores of the next flow batches; a changed capture interface is reported as
restart-required (status key, log, metric) and not applied: capture goes on as it was."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fixtures.etcd import EtcdServer, ServiceProcess, config_key, read_status

from helpers import free_port, wait_for
from libs.common.zmqio import Puller, SocketSettings
from ml_defender.v1 import flow_pb2

pytestmark = pytest.mark.integration
NODE = "sn-test"
KEY = config_key("sniffer")
MARGIN_NS = 50_000_000  # a batch scored just before the swap may be stamped just after it


def receive(sock: Puller, batches: list[flow_pb2.FlowBatch]) -> list[flow_pb2.FlowBatch]:
    """Append what is queued to `batches`; returns `batches`."""
    while (msg := sock.recv(20)) is not None:
        assert isinstance(msg, flow_pb2.FlowBatch)
        batches.append(msg)
    return batches


def scores_after(batches: list[flow_pb2.FlowBatch], t_ns: int) -> set[float]:
    """Fast-detector scores (> 0) of batches sent after t_ns."""
    return {round(r.score, 6) for b in batches if b.sent_ns > t_ns for r in b.fast if r.score > 0}


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_fast_detector_edit_applied_live_and_interface_change_needs_restart(
    etcd_server: EtcdServer,
    shared_pcaps: Path,
    tmp_path: Path,
) -> None:
    port, metrics_port = free_port(), free_port()
    cfg = {
        "node_id": NODE,
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        # the scan replayed in a loop at 5x its pace: scored flows keep coming for the whole test
        "capture": {
            "source": "pcap",
            "pcap_paths": [str(shared_pcaps / "attack-nmap-syn-scan.pcap")],
            "pace": "realtime",
            "speed": 5.0,
            "loop": True,
            "rebase_time": True,
        },
        "flows": {"export_interval_ms": 50, "half_open_timeout_s": 0.5},
        "output": {"endpoint": f"tcp://127.0.0.1:{port}", "bind": True},
    }
    batches: list[flow_pb2.FlowBatch] = []

    def status() -> dict[str, Any]:
        return read_status(etcd_server, NODE, "sniffer")

    sock = Puller(
        "test",
        SocketSettings(endpoint=f"tcp://127.0.0.1:{port}"),
        {"ml_defender.v1.FlowBatch": flow_pb2.FlowBatch},
    )
    with contextlib.closing(sock), ServiceProcess("sniffer", cfg, tmp_path, etcd_server) as proc:
        wait_for(lambda: proc.alive() and status(), 30, what="sniffer reporting to etcd")
        wait_for(lambda: scores_after(receive(sock, batches), 0), 30, what="port-scan flows scored")
        assert scores_after(batches, 0) == {0.75}  # the default score of a fired rule

        etcd_server.ctl("put", KEY, json.dumps({"fast_detector": {"score": 0.9}}))
        wait_for(
            lambda: status().get("changed") == ["fast_detector.score"] and status()["result"] == "APPLIED",
            10,
            what="edit applied",
        )
        st = status()
        applied_ns = int(st["applied_ns"])
        wait_for(
            lambda: scores_after(receive(sock, batches), applied_ns + MARGIN_NS),
            30,
            what="flows scored after the edit",
        )
        assert scores_after(batches, applied_ns + MARGIN_NS) == {0.9}
        assert metric(metrics_port, "mld_sniffer_config_revision") == st["revision"]

        # a restart-required field: reported, not applied (the pcap capture goes on, no reopen)
        etcd_server.ctl(
            "put",
            KEY,
            json.dumps({"fast_detector": {"score": 0.9}, "capture": {"interface": "mld-nosuch0"}}),
        )
        wait_for(lambda: status().get("changed") == ["capture.interface"], 10, what="restart field seen")
        st = status()
        assert st["result"] == "APPLIED" and st["pending_restart"] == ["capture.interface"]
        assert metric(metrics_port, "mld_sniffer_config_pending_restart_fields") == 1
        wait_for(
            lambda: "restart required to apply: capture.interface" in proc.log_text(),
            5,
            what="restart-required warning in the log",
        )
        seen = len(batches)
        wait_for(lambda: len(receive(sock, batches)) > seen, 30, what="capture still running")
        assert proc.alive() and scores_after(batches, applied_ns + MARGIN_NS) == {0.9}
