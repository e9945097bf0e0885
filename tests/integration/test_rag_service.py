"""The rag service as a process: catch-up, new pairs searchable within 1 s, damaged pairs counted,
answers over the socket equal to the CLI's direct mode, clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO, free_port, wait_for
from services.rag.corpus import CorpusGenerator, write_corpus, write_pair
from services.rag.errors import ServiceUnavailable
from services.rag.server import call

MLD_RAG = [sys.executable, "-m", "services.rag"]


class Service:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.metrics_port = free_port()
        self.config = tmp / "rag.json"
        self.config.write_text(
            json.dumps(
                {
                    "metrics": {"port": self.metrics_port},
                    "index": {"dir": str(tmp / "index"), "save_interval_s": 0.5},
                    "ingest": {"artifacts_root": str(tmp / "artifacts"), "poll_interval_ms": 100},
                    "query": {"endpoint": self.endpoint},
                }
            )
        )
        self.log = open(tmp / "rag.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*MLD_RAG, "run", "--config", str(self.config)],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def ask(self, cmd: str, **args: Any) -> Any:
        return call(self.endpoint, cmd, args, 5000)

    def up(self) -> bool:
        assert self.proc.poll() is None, (self.tmp / "rag.log").read_text()[-3000:]
        try:
            self.ask("ping")
        except ServiceUnavailable:
            return False
        return True

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MLD_RAG, *args, "--config", str(self.config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return int(self.proc.returncode)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    write_corpus(tmp_path / "artifacts", 300, seed=21)
    svc = Service(tmp_path)
    try:
        wait_for(svc.up, timeout=90, interval=0.1, what="rag service answering")
        yield svc
    finally:
        svc.stop()


@pytest.mark.integration
def test_service_follows_artifacts_and_answers(service: Service, tmp_path: Path) -> None:
    assert service.ask("stats")["events"] == 300
    # A new pair is searchable within a second of being renamed into place.
    new = CorpusGenerator(seed=99, now_ns=time.time_ns()).generate(1)[0].event
    t0 = time.monotonic()
    write_pair(tmp_path / "artifacts", new)
    shown = wait_for(
        lambda: _try_show(service, new.event_id), timeout=1.0, interval=0.02, what="new pair indexed"
    )
    assert shown["event_id"] == new.event_id and time.monotonic() - t0 < 1.0
    # A damaged pair is skipped and counted, never fatal.
    bad = CorpusGenerator(seed=98, now_ns=time.time_ns()).generate(1)[0].event
    _pb, js = write_pair(tmp_path / "artifacts", bad)
    js.write_text("{broken")
    wait_for(
        lambda: 'mld_rag_pairs_damaged_total{reason="json"} 1.0' in service.metrics(),
        timeout=5,
        what="damaged pair counted",
    )
    assert "mld_rag_index_events 301.0" in service.metrics()
    # The CLI goes through the service; --direct is refused while the service holds the index.
    via = service.cli("query", "--json", "--now", "2026-03-10T12:00:00Z", "blocked", "port", "scans")
    assert via.returncode == 0, via.stderr
    direct = service.cli("query", "--direct", "blocked port scans")
    assert direct.returncode == 1 and "in use by another rag process" in direct.stderr
    bad_q = service.cli("similar", "no-such-id")
    assert bad_q.returncode == 1 and "not in the index" in bad_q.stderr
    # SIGTERM: clean stop, snapshot written; then the CLI answers directly, the same way.
    assert service.stop() == 0
    after = service.cli("query", "--json", "--now", "2026-03-10T12:00:00Z", "blocked", "port", "scans")
    assert after.returncode == 0, after.stderr
    assert [h["event_id"] for h in json.loads(after.stdout)["results"]] == [
        h["event_id"] for h in json.loads(via.stdout)["results"]
    ]


def _try_show(service: Service, event_id: str) -> dict[str, Any] | None:
    try:
        return dict(service.ask("show", event_id=event_id))
    except Exception:
        return None


@pytest.mark.integration
def test_rebuild_through_the_service(service: Service) -> None:
    before = service.ask("query", question="Find botnet-like behavior", limit=10)["results"]
    r = service.cli("rebuild")
    assert r.returncode == 0 and "rebuilt: 300 events" in r.stdout, r.stderr
    after = service.ask("query", question="Find botnet-like behavior", limit=10)["results"]
    assert [h["event_id"] for h in after] == [h["event_id"] for h in before]
    assert os.path.exists(service.tmp / "index" / "events.sqlite")
