"""Must-show: `etcdctl put` of a new threshold is applied by a running `mld-detector run --etcd ...`
and changes the decision of the next flow; an invalid document leaves it deciding as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.detector import decide, detector_config, peers
from fixtures.etcd import EtcdServer, ServiceProcess, TcpProxy, config_key, read_status

from helpers import wait_for
from libs.common.events import enum_name
from ml_defender.v1 import detection_pb2

pytestmark = pytest.mark.integration
NODE = "det-test"
KEY = config_key("ml-detector")


@pytest.fixture
def detector(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[dict[str, Any]]:
    cfg = detector_config(NODE)
    with peers(cfg) as d, ServiceProcess("ml-detector", cfg, tmp_path, etcd_server) as proc:
        wait_for(lambda: proc.alive() and status(etcd_server), 60, what="detector up and reporting to etcd")
        yield dict(d, proc=proc)


def status(server: EtcdServer) -> dict[str, Any]:
    return read_status(server, NODE, "ml-detector")


def flip(ev: detection_pb2.DetectionEvent) -> tuple[dict[str, float], str]:
    """Thresholds on the other side of this flow's score, and the decision they give it."""
    f = ev.final_score
    if f >= ev.thresholds.drop:
        return {"drop": round((f + 1.0) / 2, 6), "alert": 0.0}, "ALERT"
    return {"drop": round(f / 2, 6), "alert": 0.0}, "DROP"


def test_etcdctl_threshold_changes_next_decision_of_running_detector(
    etcd_server: EtcdServer, detector: dict[str, Any]
) -> None:
    first = decide(detector, 1)
    before = enum_name(detection_pb2.Decision, first.decision)
    new, expected = flip(first)  # a drop threshold that flips DROP <-> not DROP for this flow
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
    assert enum_name(detection_pb2.Decision, ev.decision) == expected and detector["proc"].alive()
    assert "rejected" in detector["proc"].log_text()


def test_detector_decides_through_an_etcd_outage_and_restarts_from_the_cache(
    etcd_server: EtcdServer, etcd_proxy: TcpProxy, tmp_path: Path
) -> None:
    """The detector reaches etcd through a relay the test cuts: an edit made during the outage is
    applied on reconnect; a restart while etcd is unreachable starts from the cached edit."""
    cfg = detector_config(NODE)

    def decision(d: dict[str, Any], seq: int) -> str:
        return enum_name(detection_pb2.Decision, decide(d, seq).decision)

    with peers(cfg) as d:
        with ServiceProcess("ml-detector", cfg, tmp_path, etcd_server, url=etcd_proxy.url) as proc:
            wait_for(lambda: proc.alive() and status(etcd_server), 60, what="detector reporting to etcd")
            first = decide(dict(d, proc=proc), 1)
            before = enum_name(detection_pb2.Decision, first.decision)
            new, expected = flip(first)
            etcd_proxy.cut()
            wait_for(lambda: "etcd watch lost" in proc.log_text(), 10, what="outage noticed")
            rev = status(etcd_server)["revision"]
            etcd_server.ctl("put", KEY, json.dumps({"thresholds": new}))  # the service cannot see it
            assert decision(dict(d, proc=proc), 2) == before  # keeps deciding, on the old values
            etcd_proxy.restore()
            wait_for(
                lambda: status(etcd_server).get("revision", 0) > rev, 15, what="edit applied on reconnect"
            )
            assert decision(dict(d, proc=proc), 3) == expected
        etcd_proxy.cut()  # etcd unreachable for the restart
        with ServiceProcess(
            "ml-detector", cfg, tmp_path, etcd_server, url=etcd_proxy.url, log_name="restart"
        ) as proc:
            wait_for(proc.alive, 5, what="detector restarted")
            assert decision(dict(d, proc=proc), 4) == expected  # the cached edit, not the file's defaults
            assert "cached last good configuration" in proc.log_text()
