"""A second real service on live configuration: `mld-rag-logger run --etcd` takes its keep policy
from etcd, applies an `etcdctl put` while running, and stores the ConfigChange events that every
ConfigRuntime sends (here its own) as artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fixtures.etcd import EtcdServer, ServiceProcess, config_key, read_status

from helpers import REPO, free_port, wait_for
from libs.common.events import ip_bytes
from libs.common.zmqio import Pusher, SocketSettings
from ml_defender.v1 import detection_pb2, flow_pb2

pytestmark = pytest.mark.integration
NODE = "rl-test"
KEY = config_key("rag-logger")


def event(n: int) -> detection_pb2.DetectionEvent:
    flow = flow_pb2.FlowRecord(
        flow_id=n,
        key=flow_pb2.FlowKey(
            src_addr=ip_bytes("198.18.0.7"),
            dst_addr=ip_bytes("198.18.1.7"),
            src_port=n,
            dst_port=443,
            protocol=6,
        ),
        first_seen_ns=1_700_000_000_000_000_000 + n,
        last_seen_ns=1_700_000_000_000_000_000 + n + 1000,
    )
    return detection_pb2.DetectionEvent(
        event_id=f"0190f0f0-0000-7000-8000-{n:012d}", flow=flow, final_score=0.1
    )


def not_kept(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError as exc:  # the endpoint may open a moment after the etcd status appears
        raise AssertionError(f"/metrics not answering yet: {exc}") from None
    lines = [ln for ln in text.splitlines() if ln.startswith("mld_rag_logger_events_not_kept_total")]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def status(server: EtcdServer) -> dict[str, Any]:
    return read_status(server, NODE, "rag-logger")


def verify(root: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "services.rag_logger", "verify", str(root), "--json"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1]) if out.stdout.strip() else {}


def test_rag_logger_keep_policy_from_etcd_applied_live(etcd_server: EtcdServer, tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    root = tmp_path / "artifacts"
    metrics_port = free_port()
    cfg = {
        "node_id": NODE,
        "input": {"endpoint": endpoint, "bind": True},
        "metrics": {"port": metrics_port},
        "artifacts_root": str(root),
    }
    etcd_server.ctl("put", KEY, json.dumps({"keep": {"keep_all": False, "final_min": 0.7}}))
    pusher = Pusher("test", SocketSettings(endpoint=endpoint))
    try:
        with ServiceProcess("rag-logger", cfg, tmp_path, etcd_server, events=endpoint) as proc:
            wait_for(lambda: proc.alive() and status(etcd_server), 30, what="rag-logger reporting to etcd")
            assert pusher.send(event(1))  # final 0.1 < 0.7 and keep_all off: not kept
            wait_for(lambda: not_kept(metrics_port) == 1, 10, what="event 1 judged by the old policy")
            etcd_server.ctl("put", KEY, json.dumps({"keep": {"keep_all": True, "final_min": 0.7}}))
            wait_for(lambda: status(etcd_server).get("changed") == ["keep.keep_all"], 10, what="edit applied")
            assert pusher.send(event(2))
            wait_for(lambda: verify(root).get("events") == 1, 20, what="event 2 kept after the live edit")
            # the ConfigChange of that edit reached the rag-logger and became an artifact too
            wait_for(lambda: verify(root).get("configs", 0) >= 1, 20, what="ConfigChange artifact")
            assert proc.alive()
    finally:
        pusher.close()
