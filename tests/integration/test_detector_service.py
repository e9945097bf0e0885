"""`mld-detector run` as a process: FlowBatch in, every event to both consumers, metrics, live
model swap (a damaged model is refused and the running one keeps scoring), clean SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import zmq

from helpers import free_port, wait_for
from ml_defender.v1 import detection_pb2, flow_pb2
from services.ml_detector.config import MODEL_NAMES

REPO = Path(__file__).resolve().parents[2]


def flow_batch(shared: Path, seq: int) -> flow_pb2.FlowBatch:
    from services.sniffer.config import SnifferSettings
    from services.sniffer.fast_detector import FastDetector
    from services.sniffer.flows import extract_flows

    recs = extract_flows([shared / "attack-ssh-bruteforce.pcap"]).records
    fast = FastDetector(SnifferSettings().fast_detector).observe(recs)
    return flow_pb2.FlowBatch(flows=recs, fast=fast, node_id="test-sniffer", sequence=seq)


def metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return -1.0  # not serving yet
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.integration
def test_service_scores_swaps_and_stops(shared_pcaps: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    for name in MODEL_NAMES:
        shutil.copytree(REPO / "models" / name, models / name)
    p_in, p_fw, p_rag, p_met = free_port(), free_port(), free_port(), free_port()
    cfg = tmp_path / "detector.json"
    cfg.write_text(
        json.dumps(
            {
                "node_id": "test-detector",
                "models_dir": str(models),
                "metrics": {"port": p_met},
                "input": {"endpoint": f"tcp://127.0.0.1:{p_in}"},
                "firewall": {"endpoint": f"tcp://127.0.0.1:{p_fw}"},
                "rag_logger": {"endpoint": f"tcp://127.0.0.1:{p_rag}"},
            }
        )
    )
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind(f"tcp://127.0.0.1:{p_in}")
    pulls = []
    for p in (p_fw, p_rag):
        s = ctx.socket(zmq.PULL)
        s.bind(f"tcp://127.0.0.1:{p}")
        pulls.append(s)
    log = (tmp_path / "detector.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.ml_detector", "run", "--config", str(cfg)],
        cwd=REPO,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(lambda: metric(p_met, "mld_ml_detector_model_info") == 4, 30, what="detector up")

        def send_and_collect(seq: int) -> list[list[detection_pb2.DetectionEvent]]:
            batch = flow_batch(shared_pcaps, seq)
            push.send_multipart([b"ml_defender.v1.FlowBatch", batch.SerializeToString()])
            got: list[list[detection_pb2.DetectionEvent]] = [[], []]

            def all_in() -> bool:
                for i, s in enumerate(pulls):
                    while s.poll(0):
                        kind, body = s.recv_multipart()
                        assert kind == b"ml_defender.v1.DetectionEvent"
                        got[i].append(detection_pb2.DetectionEvent.FromString(body))
                return all(len(g) >= len(batch.flows) for g in got)

            wait_for(all_in, 20, what="events on both consumers")
            return got

        fw, rag = send_and_collect(1)
        assert [e.event_id for e in fw] == [e.event_id for e in rag]  # both consumers get every event
        assert any(e.decision == detection_pb2.DECISION_DROP for e in fw)
        assert fw[0].node_id == "test-detector" and fw[0].timestamps.scored_ns > 0
        old_version = fw[0].model_versions["traffic"]
        assert metric(p_met, "mld_ml_detector_flows_scored_total") == 11

        (models / "traffic" / "model.txt").write_text("tree\nversion=v4\n garbage")  # damaged new model
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: metric(p_met, 'mld_ml_detector_model_reloads_total{result="rejected"}') == 1,
            20,
            what="reload refused",
        )
        fw, _ = send_and_collect(2)
        assert fw[0].model_versions["traffic"] == old_version  # still scoring with the old model

        for f in ("model.txt", "model.sha256", "sample.json", "model.onnx"):  # a valid, different model
            shutil.copy(models / "ddos" / f, models / "traffic" / f)
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: metric(p_met, 'mld_ml_detector_model_reloads_total{result="applied"}') == 1,
            20,
            what="reload applied",
        )
        fw, _ = send_and_collect(4)
        assert fw[0].model_versions["traffic"] == fw[0].model_versions["ddos"] != old_version
        assert metric(p_met, "mld_ml_detector_batch_sequence_gaps_total") == 1  # sequence 3 never came

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        text = (tmp_path / "detector.log").read_text()
        assert "new models refused" in text and "traffic/model.txt" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        for s in (push, *pulls):
            s.close(0)
        ctx.term()
