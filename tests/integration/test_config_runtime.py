"""ConfigRuntime on a real etcd: etcdctl edits applied live, bad documents refused, outages survived.

A small harness stands in for a service: it "processes" items in a loop with whatever settings
`runtime.current` holds, the way the services do per batch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures.etcd import EtcdServer, TcpProxy
from pydantic import BaseModel, Field

from helpers import wait_for
from libs.common.settings import ServiceSettings
from libs.etcd_client import EtcdClient
from libs.etcd_client.crypto import generate_key
from libs.etcd_client.settings import EtcdSettings
from libs.watcher import ConfigRuntime

pytestmark = pytest.mark.integration
SERVICE = "demo-detector"
FULL = f"/ml-defender/v1/config/{SERVICE}"
OUTAGE_S = float(os.environ.get("MLD_ETCD_OUTAGE_S", "30"))


class Thresholds(BaseModel, extra="forbid", frozen=True):
    drop: float = Field(0.7, ge=0.0, le=1.0)


class Demo(ServiceSettings, frozen=True):
    thresholds: Thresholds = Thresholds()
    endpoint: str = "tcp://127.0.0.1:5571"


def decide(score: float, settings: Demo) -> str:
    return "DROP" if score >= settings.thresholds.drop else "ALLOW"


def runtime(url: str, tmp_path: Path, **kw: Any) -> ConfigRuntime[Demo]:
    etcd = EtcdSettings(
        endpoint=url,
        events_endpoint=None,
        cache_dir=tmp_path / "cache",
        timeout_s=1.0,
        backoff_max_s=0.5,
        **kw,
    )
    return ConfigRuntime(SERVICE, Demo, initial=Demo(node_id="n1"), hot_fields=("thresholds",), etcd=etcd)


def status(server: EtcdServer) -> dict[str, Any]:
    out = server.ctl("get", f"/ml-defender/v1/status/n1/{SERVICE}/config", "--print-value-only")
    return json.loads(out)


class Worker:
    """Processes one item every 10 ms with the current settings; counts what it did."""

    def __init__(self, rt: ConfigRuntime[Demo]) -> None:
        self.rt, self.done, self.decisions = rt, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            self.decisions.append(decide(0.65, self.rt.current))
            self.done += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_etcdctl_put_changes_the_next_decision(etcd_server: EtcdServer, tmp_path: Path) -> None:
    rt = runtime(etcd_server.url, tmp_path)
    try:
        rt.start()
        assert decide(0.65, rt.current) == "ALLOW"
        etcd_server.ctl("put", FULL, '{"thresholds": {"drop": 0.6}}')
        wait_for(lambda: decide(0.65, rt.current) == "DROP", 5, what="new threshold applied")
        st = status(etcd_server)
        assert st["result"] == "APPLIED" and st["revision"] == rt.revision

        def heartbeat() -> dict[str, Any]:
            return json.loads(
                etcd_server.ctl("get", f"/ml-defender/v1/nodes/n1/{SERVICE}", "--print-value-only")
            )

        wait_for(
            lambda: heartbeat()["config_revision"] == rt.revision, 5, what="heartbeat with the new revision"
        )
        assert heartbeat()["pid"] == os.getpid()
    finally:
        rt.stop()


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ('{"thresholds": {"drop": "high"}}', "valid number"),
        ('{"thresholds": {"drop": 0.5}, "typo_field": 1}', "typo_field: Extra inputs are not permitted"),
        ('{"thresholds": {"drop": 1.7}}', "less than or equal to 1"),
        ('{"thresholds": {"drop": 0.5', "not JSON"),
    ],
)
def test_invalid_document_rejected_with_reason(
    etcd_server: EtcdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, doc: str, reason: str
) -> None:
    etcd_server.ctl("put", FULL, '{"thresholds": {"drop": 0.8}}')
    rt = runtime(etcd_server.url, tmp_path)
    worker = None
    try:
        rt.start()
        worker = Worker(rt)
        with caplog.at_level(logging.ERROR, logger="libs.watcher.runtime"):
            etcd_server.ctl("put", FULL, doc)
            wait_for(
                lambda: status(etcd_server)["result"] == "REJECTED", 5, what="rejection in the status key"
            )
        assert reason in status(etcd_server)["error"]
        assert any(reason in r.getMessage() for r in caplog.records)
        assert rt.current.thresholds.drop == 0.8
        before = worker.done
        wait_for(lambda: worker.done > before + 5, 5, what="worker still processing")
    finally:
        if worker:
            worker.close()
        rt.stop()


def test_wrong_key_for_encrypted_envelope_rejected(
    etcd_server: EtcdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generate_key(tmp_path / "service.key")
    generate_key(tmp_path / "other.key")
    writer = EtcdClient(etcd_server.url, key_file=tmp_path / "other.key")
    rt = runtime(etcd_server.url, tmp_path, key_file=tmp_path / "service.key")
    worker = None
    try:
        rt.start()
        worker = Worker(rt)
        with caplog.at_level(logging.ERROR, logger="libs.watcher.runtime"):
            writer.set(f"config/{SERVICE}", {"thresholds": {"drop": 0.1}}, encrypt=True)
            wait_for(lambda: status(etcd_server)["result"] == "REJECTED", 5, what="rejection")
        assert "wrong key" in status(etcd_server)["error"] and rt.current.thresholds.drop == 0.7
        assert any("wrong key" in r.getMessage() for r in caplog.records)
        before = worker.done
        wait_for(lambda: worker.done > before + 5, 5, what="worker still processing")
        right = EtcdClient(etcd_server.url, key_file=tmp_path / "service.key")
        right.set(f"config/{SERVICE}", {"thresholds": {"drop": 0.2}}, encrypt=True, compress=True)
        wait_for(lambda: rt.current.thresholds.drop == 0.2, 5, what="sealed value applied")
    finally:
        if worker:
            worker.close()
        rt.stop()


def test_edit_made_while_disconnected_is_applied_on_reconnect(
    etcd_server: EtcdServer, etcd_proxy: TcpProxy, tmp_path: Path
) -> None:
    rt = runtime(etcd_proxy.url, tmp_path)
    worker = None
    try:
        rt.start()
        worker = Worker(rt)
        wait_for(lambda: rt.connected, 5, what="watch connected")
        etcd_proxy.cut()
        wait_for(lambda: not rt.connected, 5, what="outage noticed")
        etcd_server.ctl("put", FULL, '{"thresholds": {"drop": 0.6}}')  # the service cannot see this yet
        before = worker.done
        time.sleep(1.0)  # the outage itself: nothing to poll for
        assert worker.done > before + 20 and rt.current.thresholds.drop == 0.7
        etcd_proxy.restore()
        wait_for(lambda: rt.current.thresholds.drop == 0.6, 10, what="edit applied after reconnect")
        wait_for(lambda: worker.decisions[-1] == "DROP", 5, what="next decision uses the edit")
    finally:
        if worker:
            worker.close()
        rt.stop()


def test_etcd_killed_then_back_keeps_processing_and_applies_edit(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    rt = runtime(etcd_server.url, tmp_path)
    worker = None
    try:
        rt.start()
        worker = Worker(rt)
        etcd_server.kill()
        wait_for(lambda: not rt.connected, 5, what="outage noticed")
        deadline = time.monotonic() + OUTAGE_S
        last = worker.done
        while time.monotonic() < deadline:  # processing goes on during the whole outage
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            assert worker.done > last, "worker stalled while etcd was down"
            last = worker.done
        etcd_server.start()
        etcd_server.ctl("put", FULL, '{"thresholds": {"drop": 0.6}}')
        wait_for(lambda: rt.current.thresholds.drop == 0.6, 10, what="edit applied after etcd came back")
        wait_for(lambda: rt.connected, 10, what="watch reconnected")
        hb_key = f"/ml-defender/v1/nodes/n1/{SERVICE}"
        wait_for(
            lambda: etcd_server.ctl("get", hb_key, "--print-value-only").strip(), 15, what="heartbeat back"
        )
    finally:
        if worker:
            worker.close()
        rt.stop()


def test_restart_with_etcd_down_uses_cached_config(etcd_server: EtcdServer, tmp_path: Path) -> None:
    etcd_server.ctl("put", FULL, '{"thresholds": {"drop": 0.55}, "endpoint": "tcp://127.0.0.1:6100"}')
    first = runtime(etcd_server.url, tmp_path)
    first.start()
    first.stop()
    etcd_server.kill()
    second = runtime(etcd_server.url, tmp_path)
    try:
        cur = second.start()
        assert (
            second.source == "cache"
            and cur.thresholds.drop == 0.55
            and cur.endpoint == "tcp://127.0.0.1:6100"
        )
        assert second.metrics.source.labels("cache")._value.get() == 1
        assert second.metrics.etcd_connected._value.get() == 0
        etcd_server.start()
        etcd_server.ctl("put", FULL, '{"thresholds": {"drop": 0.5}, "endpoint": "tcp://127.0.0.1:6100"}')
        wait_for(lambda: second.current.thresholds.drop == 0.5, 10, what="etcd picked up after it appeared")
        assert second.source == "etcd"
    finally:
        second.stop()


def test_config_change_event_reaches_the_rag_logger_endpoint(etcd_server: EtcdServer, tmp_path: Path) -> None:
    from helpers import free_port
    from libs.common.zmqio import Puller, SocketSettings
    from ml_defender.v1 import config_pb2

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    puller = Puller(
        "test",
        SocketSettings(endpoint=endpoint, bind=True),
        {"ml_defender.v1.ConfigChange": config_pb2.ConfigChange},
    )
    etcd = EtcdSettings(endpoint=etcd_server.url, events_endpoint=endpoint, cache_dir=tmp_path / "cache")
    rt = ConfigRuntime(SERVICE, Demo, initial=Demo(node_id="n1"), hot_fields=("thresholds",), etcd=etcd)
    try:
        rt.start()
        etcd_server.ctl("put", FULL, '{"thresholds": {"drop": 0.6}, "endpoint": "tcp://127.0.0.1:7000"}')
        msg = wait_for(lambda: puller.recv(100), 5, what="ConfigChange event")
        assert isinstance(msg, config_pb2.ConfigChange)
        assert msg.result == config_pb2.CONFIG_RESULT_APPLIED and msg.service == SERVICE and msg.node == "n1"
        assert {(d.path, d.new_json, d.hot) for d in msg.diff} == {
            ("thresholds.drop", "0.6", True),
            ("endpoint", '"tcp://127.0.0.1:7000"', False),
        }
        etcd_server.ctl("put", FULL, "not json")
        msg = wait_for(lambda: puller.recv(100), 5, what="rejection event")
        assert msg.result == config_pb2.CONFIG_RESULT_REJECTED and "not JSON" in msg.error
    finally:
        rt.stop()
        puller.close()
