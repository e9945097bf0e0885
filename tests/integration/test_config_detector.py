"""Must-show: `etcdctl put` of a new threshold is applied by a running `mld-detector run --etcd ...`
and changes the decision of the next flow; an invalid document leaves it deciding as before."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.etcd import EtcdServer

from helpers import REPO, free_port, wait_for
from libs.common.events import enum_name, ip_bytes
from libs.common.zmqio import Puller, Pusher, SocketSettings
from ml_defender.v1 import detection_pb2, flow_pb2

pytestmark = pytest.mark.integration
NODE = "det-test"
KEY = "/ml-defender/v1/config/ml-detector"
STATUS = f"/ml-defender/v1/status/{NODE}/ml-detector/config"


def batch(seq: int) -> flow_pb2.FlowBatch:
    rec = flow_pb2.FlowRecord(
        flow_id=seq,
        key=flow_pb2.FlowKey(
            src_addr=ip_bytes("198.18.0.10"),
            dst_addr=ip_bytes("198.18.1.20"),
            src_port=40000 + seq,
            dst_port=80,
            protocol=6,
        ),
        first_seen_ns=1_000_000_000 * seq,
        last_seen_ns=1_000_000_000 * seq + 1000,
    )
    return flow_pb2.FlowBatch(
        flows=[rec], fast=[flow_pb2.FastResult(score=0.0)], node_id="test", sequence=seq
    )


@pytest.fixture
def detector(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not (REPO / "models" / "ddos" / "model.txt").exists():
        pytest.skip("trained models not present (make train)")
    ports = {name: free_port() for name in ("input", "firewall", "rag_logger")}
    cfg = {
        "node_id": NODE,
        "input": {"endpoint": f"tcp://127.0.0.1:{ports['input']}"},
        "firewall": {"endpoint": f"tcp://127.0.0.1:{ports['firewall']}"},
        "rag_logger": {"endpoint": f"tcp://127.0.0.1:{ports['rag_logger']}"},
        "metrics": {"port": 0},
        "batch": {"max_wait_ms": 1},
    }
    (tmp_path / "det.json").write_text(json.dumps(cfg))
    sniffer = Pusher("test", SocketSettings(endpoint=cfg["input"]["endpoint"], bind=True))
    firewall = Puller(
        "test",
        SocketSettings(endpoint=cfg["firewall"]["endpoint"], bind=True),
        {"ml_defender.v1.DetectionEvent": detection_pb2.DetectionEvent},
    )
    rag = Puller(
        "test",
        SocketSettings(endpoint=cfg["rag_logger"]["endpoint"], bind=True),
        {"ml_defender.v1.DetectionEvent": detection_pb2.DetectionEvent},
    )
    log = open(tmp_path / "detector.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.ml_detector",
            "run",
            "--config",
            str(tmp_path / "det.json"),
            "--etcd",
            etcd_server.url,
            "--config-cache",
            str(tmp_path / "cache"),
            "--config-events",
            "",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: proc.poll() is None and etcd_server.ctl("get", STATUS, "--print-value-only").strip(),
            60,
            what="detector up and reporting to etcd",
        )
        yield {"proc": proc, "sniffer": sniffer, "firewall": firewall, "log": tmp_path / "detector.log"}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        for s in (sniffer, firewall, rag):
            s.close()


def decide(d: dict[str, Any], seq: int) -> detection_pb2.DetectionEvent:
    assert d["proc"].poll() is None, d["log"].read_text()[-3000:]
    # no peer yet (the detector loads its models after reading etcd): a PUSH without peers keeps nothing
    wait_for(lambda: d["sniffer"].send(batch(seq)), 60, what="detector connected to the sniffer endpoint")
    ev = wait_for(lambda: d["firewall"].recv(100), 20, what=f"event for flow {seq}")
    assert isinstance(ev, detection_pb2.DetectionEvent)
    return ev


def status(server: EtcdServer) -> dict[str, Any]:
    return json.loads(server.ctl("get", STATUS, "--print-value-only"))


def test_etcdctl_threshold_changes_next_decision_of_running_detector(
    etcd_server: EtcdServer, detector: dict[str, Any]
) -> None:
    first = decide(detector, 1)
    f = first.final_score
    before = enum_name(detection_pb2.Decision, first.decision)
    # a drop threshold on the other side of this flow's score flips DROP <-> not DROP
    if f >= first.thresholds.drop:
        new = {"drop": round((f + 1.0) / 2, 6), "alert": 0.0}
        expected = "ALERT"
    else:
        new = {"drop": round(f / 2, 6), "alert": 0.0}
        expected = "DROP"
    assert before != expected
    etcd_server.ctl("put", KEY, json.dumps({"thresholds": new}))
    wait_for(
        lambda: status(etcd_server)["result"] == "APPLIED" and status(etcd_server)["revision"] > 0,
        10,
        what="detector applied the edit",
    )
    ev = decide(detector, 2)
    assert enum_name(detection_pb2.Decision, ev.decision) == expected
    assert (
        abs(ev.thresholds.drop - new["drop"]) < 1e-9 and ev.config_revision == status(etcd_server)["revision"]
    )

    # an invalid document: rejected with the reason, decisions unchanged, process alive
    etcd_server.ctl("put", KEY, json.dumps({"thresholds": {"drop": 2.5}}))
    wait_for(lambda: status(etcd_server)["result"] == "REJECTED", 10, what="rejection")
    assert "thresholds.drop" in status(etcd_server)["error"]
    ev = decide(detector, 3)
    assert enum_name(detection_pb2.Decision, ev.decision) == expected and detector["proc"].poll() is None
    assert "rejected" in detector["log"].read_text()
