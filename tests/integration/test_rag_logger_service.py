"""The real `mld-rag-logger run` process fed over ZeroMQ: artifacts on disk, SIGTERM drains, exit 0."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from helpers import REPO, free_port, wait_for
from libs.common.zmqio import Pusher, SocketSettings
from services.rag_logger.synth import make_config_change, make_event
from services.rag_logger.verify import verify

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def scrape(port: int, name: str) -> float:
    """Sum of a metric's samples on the service's /metrics; -1 while the endpoint is not up."""
    try:
        text = _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    zport, mport = free_port(), free_port()
    cfg = {
        "input": {"endpoint": f"tcp://127.0.0.1:{zport}", "bind": True},
        "metrics": {"port": mport},
        "artifacts_root": str(tmp_path / "artifacts"),
        "storage": {"min_free_bytes": 0},
    }
    cfg_path = tmp_path / "rag-logger.json"
    cfg_path.write_text(json.dumps(cfg))
    stderr = (tmp_path / "stderr.log").open("wb")
    script = Path(sys.executable).with_name("mld-rag-logger")  # the console script the lab runs
    proc = subprocess.Popen(
        [str(script), "run", "--config", str(cfg_path)],
        cwd=REPO,
        stderr=stderr,
    )
    try:
        wait_for(
            lambda: proc.poll() is None and scrape(mport, "mld_rag_logger_queue_capacity_events") > 0,
            timeout=20,
            what="rag-logger metrics endpoint",
        )
        yield proc, zport, mport, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        stderr.close()


@pytest.mark.integration
def test_events_over_zeromq_become_artifacts_and_sigterm_drains(service) -> None:  # type: ignore[no-untyped-def]
    proc, zport, mport, tmp = service
    ctx = zmq.Context()
    push = Pusher(
        "rag_logger_test", SocketSettings(endpoint=f"tcp://127.0.0.1:{zport}", send_timeout_ms=5000), ctx
    )
    try:
        rng = random.Random(11)
        now = time.time_ns()
        kept = [make_event(now + i, rng) for i in range(300)]
        low = [make_event(now + i, rng, score=0.1) for i in range(100)]
        for ev in kept[:100] + low:
            assert push.send(ev)
        assert push.send(make_config_change(now, "change-1"))
        wait_for(lambda: verify(tmp / "artifacts").events == 100, timeout=30, what="first 100 artifacts")
        assert scrape(mport, "mld_rag_logger_events_not_kept_total") == 100
        # the rest, then SIGTERM as soon as the service has them all: the drain must write every one
        for ev in kept[100:]:
            assert push.send(ev)
        wait_for(
            lambda: scrape(mport, "mld_rag_logger_events_received_total") == 401,
            timeout=30,
            what="all received",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        push.sock.close(0)
        ctx.destroy(0)  # never leave a context whose term() would wait forever
    rep = verify(tmp / "artifacts")
    assert rep.problems == [] and rep.ids == {e.event_id for e in kept} and rep.configs == 1
    log_lines = [
        json.loads(line) for line in (tmp / "stderr.log").read_text().splitlines() if line.startswith("{")
    ]
    assert any(d["msg"] == "rag-logger stopped" and d["unwritten"] == 0 for d in log_lines)
    jsonl = list((tmp / "artifacts").glob("*/events-*.jsonl"))
    assert sum(len(p.read_bytes().splitlines()) for p in jsonl) == 300


@pytest.mark.integration
def test_bad_config_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"keep": {"final_min": 2}}))
    res = subprocess.run(
        [sys.executable, "-m", "services.rag_logger", "run", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("mld-rag-logger: error: ") and "keep.final_min" in res.stderr
    assert "Traceback" not in res.stderr
