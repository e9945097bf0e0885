"""Replay cases: every shared capture gives the reviewed flows, counts and fast-detector results,
and the counts agree with independent readers (tshark always, NFStream when installed)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sniffer_cases import CASES, case_name, compute, read_case

from libs.common.events import FEATURE_NAMES

pytestmark = pytest.mark.replay

CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.json").exists())


def pcap_of(shared: Path, name: str) -> Path:
    summary = json.loads((CASES / name / "case.json").read_text())
    return shared / str(summary["pcap"])


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def test_every_shared_capture_has_a_case(shared_pcaps: Path) -> None:
    missing = [p.name for p in sorted(shared_pcaps.glob("*.pcap*")) if case_name(p) not in CASE_NAMES]
    assert not missing, f"run tests/replay/regenerate.py for {missing}"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_flows_match_expected(shared_pcaps: Path, name: str) -> None:
    got = compute(pcap_of(shared_pcaps, name))
    want = read_case(CASES / name)
    assert got["summary"] == want["summary"]
    assert len(got["flows"]) == len(want["flows"])
    for i, (g, w) in enumerate(zip(got["flows"], want["flows"], strict=True)):
        gf, wf = g.pop("features"), w.pop("features")
        assert g == w, f"flow {i}: fields differ"
        bad = [n for n in FEATURE_NAMES if not same(gf.get(n, 0), wf.get(n, 0))]
        assert not bad, f"flow {i} ({g['community_id']}): {[(n, gf.get(n), wf.get(n)) for n in bad]}"


def test_fast_detector_against_truth(shared_pcaps: Path) -> None:
    """Scan attackers fire; no benign host and no host outside attackers/ignore ever fires."""
    truth = json.loads((shared_pcaps / "TRUTH.json").read_text())
    for entry in truth:
        fired = read_case(CASES / case_name(Path(entry["file"])))["summary"]["fast_rules_by_source"]
        allowed = set(entry["attackers"]) | set(entry["ignore"])
        assert set(fired) <= allowed, f"{entry['file']}: false positives {set(fired) - allowed}"
        if entry["attack_type"] in ("portscan", "icmp_sweep"):
            assert set(entry["attackers"]) <= set(fired), f"{entry['file']}: attacker not flagged"
    espn = read_case(CASES / "benign-web-pageload-espn")["summary"]
    assert espn["fast_rules_by_source"] == {}


_CONV = re.compile(r"^(\S+)\s+<->\s+(\S+)\s+(.*)$")


def _endpoint(text: str) -> tuple[str, int]:
    addr, _, port = text.rpartition(":")
    return addr, int(port)


def tshark_view(pcap: Path) -> tuple[int, dict[tuple[Any, ...], int]]:
    """(frames, packets per canonical TCP/UDP 5-tuple) as tshark's conversation tables see them."""
    out = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-q", "-z", "conv,tcp", "-z", "conv,udp", "-z", "io,stat,0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    frames = 0
    convs: dict[tuple[Any, ...], int] = {}
    proto = 0
    for line in out.splitlines():
        if line.startswith("TCP Conversations"):
            proto = 6
        elif line.startswith("UDP Conversations"):
            proto = 17
        io = re.match(r"^\|\s*[\d.]+\s*<>\s*[\d.]+\s*\|\s*([\d,]+)\s*\|", line)
        if io:
            frames = int(io.group(1).replace(",", ""))
        m = _CONV.match(line)
        if m and proto:
            a, b = sorted([_endpoint(m.group(1)), _endpoint(m.group(2))])
            total = int(m.group(3).split()[6].replace(",", ""))
            convs[(proto, a, b)] = total
    return frames, convs


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (make setup installs it)")
@pytest.mark.parametrize("name", CASE_NAMES)
def test_counts_agree_with_tshark(shared_pcaps: Path, name: str) -> None:
    frames, convs = tshark_view(pcap_of(shared_pcaps, name))
    case = read_case(CASES / name)
    assert case["summary"]["packets"] == frames
    ours: dict[tuple[Any, ...], int] = defaultdict(int)
    for f in case["flows"]:
        if f["protocol_number"] in (6, 17):
            a, b = sorted([(f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])])
            ours[(f["protocol_number"], a, b)] += f["features"]["bidirectional_packets"]
    assert dict(ours) == convs


def test_counts_agree_with_nfstream(shared_pcaps: Path) -> None:
    """Same flows (key, direction, packets, bytes) as NFStream with IP-layer accounting."""
    nfstream = pytest.importorskip(
        "nfstream", reason="NFStream is the bench extra: pip install -e '.[bench]'"
    )
    for name in ("attack-nmap-syn-scan", "benign-web-pageload-espn", "benign-smb-windows10-session"):
        pcap = pcap_of(shared_pcaps, name)
        theirs: Counter[tuple[Any, ...]] = Counter()
        streamer = nfstream.NFStreamer(
            source=str(pcap), statistical_analysis=True, n_dissections=0, accounting_mode=1, n_meters=1
        )
        for fl in streamer:
            icmp = fl.protocol in (1, 58)
            theirs[
                (fl.src_ip, fl.dst_ip, 0 if icmp else fl.src_port, 0 if icmp else fl.dst_port, fl.protocol,
                 fl.bidirectional_packets, fl.bidirectional_bytes, fl.src2dst_packets)
            ] += 1  # fmt: skip
        ours: Counter[tuple[Any, ...]] = Counter()
        for f in read_case(CASES / name)["flows"]:
            icmp = f["protocol_number"] in (1, 58)
            ft = f["features"]
            ours[
                (f["src_ip"], f["dst_ip"], 0 if icmp else f["src_port"], 0 if icmp else f["dst_port"],
                 f["protocol_number"], ft["bidirectional_packets"], ft["bidirectional_bytes"],
                 ft.get("src2dst_packets", 0))
            ] += 1  # fmt: skip
        assert ours == theirs, name
