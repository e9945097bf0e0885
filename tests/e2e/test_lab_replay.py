"""The lab end to end (issue 3): a capture with a port scan goes through all five services.

`mld-lab up` starts etcd and the services under supervisord on free ports; the test polls with
deadlines until the scanner's DROP reaches the firewall (dry-run journal), its artifact pair is on
disk and `mld-rag query` returns that event; then it checks status, idempotent start and a clean stop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import wait_for
from libs.lab import control

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
SCANNER = "172.16.0.8"


def lab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mld-lab"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def running_lab(tmp_path_factory: pytest.TempPathFactory, shared_pcaps: Path) -> Iterator[Path]:
    lab_dir = tmp_path_factory.mktemp("lab")
    up = lab(
        "up", "--lab-dir", str(lab_dir), "--artifacts-dir", str(lab_dir / "artifacts"), "--ports", "auto",
        "--pace", "fast", "--no-loop", "--timeout", "150",
        "--pcap", str(shared_pcaps / "attack-nmap-syn-scan.pcap"),
        "--pcap", str(shared_pcaps / "benign-web-pageload-espn.pcapng"),
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ML Defender lab is up" in up.stdout
        yield lab_dir
    finally:
        lab("down", "--lab-dir", str(lab_dir))


def journal_targets(lab_dir: Path) -> list[str]:
    path = lab_dir / "firewall-dry-run.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        out += [op["target"] for op in json.loads(line)["ops"] if op["op"] == "add"]
    return out


def test_scanner_is_blocked_logged_and_answerable(running_lab: Path) -> None:
    lab_dir = running_lab
    wait_for(
        lambda: SCANNER in journal_targets(lab_dir), timeout=150, what="DROP of the scanner at the firewall"
    )

    def scanner_pair() -> Path | None:
        for js in (lab_dir / "artifacts").glob("*/event_*.json"):
            doc = json.loads(js.read_text())
            if doc["src_ip"] == SCANNER and doc["decision"] == "DROP" and js.with_suffix(".pb").exists():
                return js
        return None

    pair = wait_for(scanner_pair, timeout=60, what="artifact pair of a scanner event")

    def answered() -> list[dict[str, object]]:
        q = subprocess.run(
            [str(BIN / "mld-rag"), "query", "--config", str(lab_dir / "config" / "rag.json"), "--json",
             f"port scan from {SCANNER}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert q.returncode == 0, q.stderr
        doc = json.loads(q.stdout)
        results = doc["results"] if isinstance(doc, dict) else doc
        # Every answer must cite an event whose artifact pair is on disk (read now: the lab keeps writing).
        ids = {p.stem.removeprefix("event_") for p in (lab_dir / "artifacts").glob("*/event_*.json")}
        assert all(r["event_id"] in ids for r in results), "an answer cites an event with no artifact"
        return [r for r in results if r["src_ip"] == SCANNER]

    hits = wait_for(
        answered, timeout=150, interval=1.0, what="mld-rag query answering with the scanner's event"
    )
    assert hits and pair.exists()
    # The benign page load (one client, 25 connections to 13 servers) is never blocked.
    assert set(journal_targets(lab_dir)) == {SCANNER}


def test_status_reports_real_state_and_up_is_idempotent(running_lab: Path) -> None:
    lab_dir = running_lab
    st = lab("status", "--lab-dir", str(lab_dir))
    assert st.returncode == 0, st.stdout
    for name in ("etcd", "sniffer", "ml-detector", "rag-logger", "rag", "firewall"):
        assert any(line.split()[:2] == [name, "RUNNING"] for line in st.stdout.splitlines()), st.stdout
    pid_before = (lab_dir / "supervisord.pid").read_text()
    again = lab("up", "--lab-dir", str(lab_dir))
    assert again.returncode == 0 and "already running" in again.stdout
    assert (lab_dir / "supervisord.pid").read_text() == pid_before
    ctl = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(lab_dir / "supervisord.conf"), "stop", "firewall"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ctl.returncode == 0, ctl.stdout + ctl.stderr
    st = lab("status", "--lab-dir", str(lab_dir))
    assert st.returncode == 1
    assert any(line.split()[:2] == ["firewall", "STOPPED"] for line in st.stdout.splitlines()), st.stdout


def test_down_leaves_no_process(running_lab: Path) -> None:
    lab_dir = running_lab
    st = lab("status", "--lab-dir", str(lab_dir))
    pids = [int(w) for line in st.stdout.splitlines() for w in line.split()[3:4] if w.isdigit()]
    pids.append(int((lab_dir / "supervisord.pid").read_text()))
    down = lab("down", "--lab-dir", str(lab_dir))
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not any(control.pid_alive(p) for p in pids), timeout=30, what="every lab process gone")
    st = lab("status", "--lab-dir", str(lab_dir))
    assert st.returncode == 3 and "not running" in st.stdout
