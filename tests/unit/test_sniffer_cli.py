"""`mld-sniffer` commands: output forms, summary line and exit codes (1 bad input, 2 usage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.sniffer.cli import main
from services.sniffer.config import HOT_FIELDS, SnifferSettings, is_hot
from services.sniffer.testing import ether, ipv4, tcp, udp, write_pcap

pytestmark = pytest.mark.unit
T0 = 1_700_000_000 * 10**9


@pytest.fixture
def pcap(tmp_path: Path) -> Path:
    frames = [
        ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80, "S"))),
        ether(ipv4("10.0.0.2", "10.0.0.1", 6, tcp(80, 40000, "SA"))),
        ether(ipv4("10.0.0.3", "10.0.0.4", 17, udp(5353, 5353))),
        b"\x00" * 8,
    ]
    return write_pcap(tmp_path / "small.pcap", frames, [T0 + i * 1000 for i in range(4)])


def test_flows_jsonl(pcap: Path) -> None:
    res = CliRunner().invoke(main, ["flows", str(pcap), "--jsonl", "--fast"])
    assert res.exit_code == 0, res.output
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(docs) == 2
    assert docs[0]["src_ip"] == "10.0.0.1" and docs[0]["features"]["bidirectional_packets"] == 2
    assert len(docs[0]["features"]) == 53 and docs[0]["fast"] == {"score": 0.0, "rules": []}
    assert "4 packets" in res.stderr and "2 flows" in res.stderr and "truncated_frame=1" in res.stderr
    assert "packets/s" in res.stderr


def test_flows_text(pcap: Path) -> None:
    res = CliRunner().invoke(main, ["flows", str(pcap)])
    assert res.exit_code == 0
    assert "10.0.0.1:40000 -> 10.0.0.2:80 pkts=2" in res.stdout


def test_truncated_file_prints_what_was_read_then_fails(pcap: Path) -> None:
    pcap.write_bytes(pcap.read_bytes()[:-4])
    res = CliRunner().invoke(main, ["flows", str(pcap), "--jsonl"])
    assert res.exit_code == 1
    assert len(res.stdout.splitlines()) == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mld-sniffer: error: ") and "truncated at packet 4" in last and str(pcap) in last
    assert "Traceback" not in res.stderr


def test_missing_and_non_capture_files(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["flows", str(tmp_path / "nope.pcap")])
    assert res.exit_code == 1 and "capture file not found" in res.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    res = CliRunner().invoke(main, ["flows", str(text)])
    assert res.exit_code == 1 and "not a pcap or pcapng file" in res.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert CliRunner().invoke(main, ["flows"]).exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"capture": {"pace": "warp"}}))
    res = CliRunner().invoke(main, ["check-config", "--config", str(bad)])
    assert res.exit_code == 2 and "capture.pace" in res.stderr


def test_settings_defaults_and_hot_fields() -> None:
    s = SnifferSettings()
    assert s.output.endpoint == "tcp://127.0.0.1:5571" and s.output.bind
    assert s.metrics.port == 9101
    assert (s.flows.idle_timeout_s, s.flows.active_timeout_s) == (120, 1800)
    assert s.xdp.mode == "generic" and s.xdp.map_max_entries == 262144
    assert is_hot("fast_detector.window_s") and is_hot("flows.idle_timeout_s")
    assert not is_hot("capture.source") and not is_hot("output.endpoint") and not is_hot("flows.max_flows")
    assert "fast_detector.*" in HOT_FIELDS
    with pytest.raises(ValueError, match="extra"):
        SnifferSettings.model_validate({"capture": {"bogus": 1}})
    with pytest.raises(ValueError, match="active_timeout_s"):
        SnifferSettings.model_validate({"flows": {"idle_timeout_s": 100, "active_timeout_s": 50}})
