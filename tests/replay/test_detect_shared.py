"""The acceptance check of ../shared/tools/detect_check.py, in-process: on every public capture the
labelled attackers get a DROP and no benign address does; plus the CLI's contract on one capture
and on damaged input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.events import event_to_dict
from ml_defender.v1 import detection_pb2
from services.ml_detector.analyze import analyze
from services.ml_detector.config import DetectorSettings

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "services.ml_detector"]


def truth(shared: Path) -> list[dict]:
    return json.loads((shared / "TRUTH.json").read_text())


@pytest.mark.replay
def test_attackers_dropped_and_no_benign_address_blocked(shared_pcaps: Path) -> None:
    problems = []
    for item in truth(shared_pcaps):
        events: list[dict] = []

        def emit(ev: detection_pb2.DetectionEvent, events: list[dict] = events) -> None:
            events.append(event_to_dict(ev))

        summary = analyze([shared_pcaps / item["file"]], DetectorSettings(), emit)
        assert summary.error is None, summary.error
        drops = {e["src_ip"] for e in events if e["decision"] == "DROP"}
        victims = set(item.get("victims") or [])
        if item.get("score_by") == "victim":
            if not any(
                e["dst_ip"] in victims and (e["decision"] == "DROP" or e["classification"] != "BENIGN")
                for e in events
            ):
                problems.append(f"{item['file']}: no event toward the victims")
            continue
        attackers = set(item.get("attackers") or []) if item["kind"] == "attack" else set()
        missed = attackers - drops
        false = drops - attackers - set(item.get("ignore") or [])
        if missed or false:
            problems.append(f"{item['file']}: missed {sorted(missed)}, false blocks {sorted(false)}")
    assert not problems, problems


@pytest.mark.replay
def test_cli_on_nmap_scan(shared_pcaps: Path) -> None:
    proc = subprocess.run(
        [*CLI, "analyze", str(shared_pcaps / "attack-nmap-syn-scan.pcap"), "--jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(events) > 1000
    scanner = [e for e in events if e["src_ip"] == "172.16.0.8"]
    # the scanner's very first flow (one SYN, answered) carries no evidence yet: no fast rule, no
    # context; it may stay below DROP. Every later one is dropped.
    assert all(e["decision"] == "DROP" for e in scanner[1:]), [
        e["decision"] for e in scanner[1:] if e["decision"] != "DROP"
    ]
    assert all(e["decision"] == "ALLOW" for e in events if e["src_ip"] != "172.16.0.8")
    for e in events:
        for key in (
            "event_id",
            "timestamp",
            "community_id",
            "fast_score",
            "ml_scores",
            "final_score",
            "divergence",
            "classification",
            "verdict",
            "attack_type",
            "rules",
            "features",
        ):
            assert key in e
    kept = [e for e in events if e["rag_required"] or e["final_score"] >= 0.7]
    assert kept and all(e["explanation"] for e in kept)
    assert "1994 flows" in proc.stderr and "DROP" in proc.stderr


@pytest.mark.replay
def test_cli_damaged_input(shared_pcaps: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((shared_pcaps / "attack-ftp-bruteforce.pcap").read_bytes()[:30000])
    junk = tmp_path / "junk.pcap"
    junk.write_text("hello")
    cases = [(tmp_path / "missing.pcap", 1, "not found"), (junk, 1, "not a pcap"), (cut, 1, "truncated")]
    for path, code, words in cases:
        proc = subprocess.run(
            [*CLI, "analyze", str(path), "--jsonl"], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert proc.returncode == code, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mld-detector: error:")]
        assert len(errors) == 1, proc.stderr
        assert str(path) in errors[0] and words in errors[0] and "Traceback" not in proc.stderr, proc.stderr
        if path == cut:  # the flows before the damage are still scored and printed
            drops = [json.loads(x) for x in proc.stdout.splitlines() if '"DROP"' in x]
            assert drops and drops[0]["src_ip"] == "192.168.56.1"
    proc = subprocess.run([*CLI, "analyze"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and "no capture given" in proc.stderr
