"""A running `mld-rag run --etcd` on live configuration: the ingest poll interval follows
`etcdctl put` in both directions (a long one holds new pairs back, a short one set later lets them
in at once, without waiting out the long one), and an invalid document is rejected with its reason
while the service keeps answering questions on the settings it had."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures.etcd import EtcdServer, ServiceProcess, config_key, read_status

from helpers import free_port, wait_for
from services.rag.corpus import CorpusGenerator, write_corpus, write_pair
from services.rag.errors import ServiceUnavailable
from services.rag.server import call

pytestmark = pytest.mark.integration
NODE = "rag-test"
KEY = config_key("rag")
HELD_S = 1.5  # a new pair is normally searchable within 1 s (DESIGN.md section 7)


def test_ingest_interval_applied_live_and_invalid_document_rejected(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    root = tmp_path / "artifacts"
    write_corpus(root, 20, seed=5)
    cfg = {
        "node_id": NODE,
        "metrics": {"port": 0},
        "index": {"dir": str(tmp_path / "index")},
        "ingest": {"artifacts_root": str(root), "poll_interval_ms": 100},
        "query": {"endpoint": endpoint},
    }

    def ask(cmd: str, **args: Any) -> Any:
        return call(endpoint, cmd, args, 5000)

    def up() -> bool:
        try:
            return bool(ask("ping"))
        except ServiceUnavailable:
            return False

    def indexed(event_id: str) -> bool:
        try:
            return bool(ask("show", event_id=event_id))
        except ServiceUnavailable:
            raise
        except Exception:
            return False

    def status() -> dict[str, Any]:
        return read_status(etcd_server, NODE, "rag")

    gen = CorpusGenerator(seed=77, now_ns=time.time_ns())
    held = gen.generate(1)[0].event
    with ServiceProcess("rag", cfg, tmp_path, etcd_server) as proc:
        wait_for(lambda: proc.alive() and up(), 90, interval=0.1, what="rag service answering")
        assert ask("stats")["events"] == 20

        etcd_server.ctl("put", KEY, json.dumps({"ingest": {"poll_interval_ms": 60000}}))
        wait_for(
            lambda: status().get("changed") == ["ingest.poll_interval_ms"], 10, what="long interval applied"
        )
        time.sleep(0.3)  # a poll pass that began before the edit ends (a few ms on 20 events)
        write_pair(root, held)
        deadline = time.monotonic() + HELD_S  # nothing to poll for: the pair must stay out
        while time.monotonic() < deadline:
            assert not indexed(held.event_id), "ingested although the poll interval is now 60 s"
            time.sleep(0.1)

        # invalid: rejected with the reason; the service answers on the settings it had (still held)
        etcd_server.ctl("put", KEY, json.dumps({"ingest": {"poll_interval_ms": 5}}))
        wait_for(lambda: status().get("result") == "REJECTED", 10, what="rejection in the status key")
        assert "ingest.poll_interval_ms" in status()["error"]
        wait_for(lambda: "rejected" in proc.log_text(), 5, what="rejection in the log")
        assert ask("query", question="port scans", limit=5)["results"]
        assert proc.alive() and not indexed(held.event_id)

        # a short interval again: the pair comes in now, not when the 60 s wait would have ended
        t0 = time.monotonic()
        etcd_server.ctl("put", KEY, json.dumps({"ingest": {"poll_interval_ms": 100}}))
        wait_for(lambda: indexed(held.event_id), 2, what="held pair ingested after the short interval")
        assert time.monotonic() - t0 < 2 and status()["result"] == "APPLIED"
        assert ask("stats")["events"] == 21 and proc.alive()
