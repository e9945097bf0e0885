"""The shared captures on the packet clock with the live settings (half_open_timeout_s 0.5,
tcp_close_linger_s 0, tombstones): the nmap scan is flagged within 1 s of its first probe, and no
source of a benign capture is flagged (slow answers split by the half-open timeout do not look like
scans)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from libs.common.events import ip_text
from ml_defender.v1 import flow_pb2
from services.sniffer.config import SnifferSettings
from services.sniffer.decode import decode
from services.sniffer.fast_detector import FastDetector
from services.sniffer.flows import FlowTable
from services.sniffer.pcapfile import read_capture

pytestmark = pytest.mark.replay
LIVE = SnifferSettings.model_validate(
    {
        "flows": {
            "half_open_timeout_s": 0.5,
            "tcp_close_linger_s": 0,
            "tombstone_ttl_s": 3,
            "export_active_interval_s": 5,
        }
    }
)
TICK_NS = 50_000_000  # the live sources expire every 50 ms or so
CHUNK = 4096


def flagged_at(pcap: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(first packet time per source, packet time when the fast detector first flagged it)."""
    cap = read_capture(pcap)
    table = FlowTable(LIVE)
    det = FastDetector(LIVE.fast_detector)
    first: dict[str, int] = {}
    flagged: dict[str, int] = {}

    def score(recs: list[flow_pb2.FlowRecord], now: int) -> None:
        for rec, res in zip(recs, det.observe(recs), strict=True):
            src = ip_text(rec.key.src_addr)
            first[src] = min(first.get(src, rec.first_seen_ns), rec.first_seen_ns)
            if res.rules and src not in flagged:
                flagged[src] = now

    ts = cap.ts_ns
    done = 0
    now = int(ts[0])
    while done < cap.packets:  # a live source: every tick takes what arrived, then expires
        upto = min(int(np.searchsorted(ts, now, side="right")), done + CHUNK)
        if upto > done:
            table.add_packets(
                decode(
                    cap.data,
                    cap.offsets[done:upto],
                    cap.caplens[done:upto],
                    ts[done:upto],
                    cap.linktypes[done:upto],
                )
            )
            done = upto
        score(table.expire(now), now)
        now += TICK_NS
        if done < cap.packets and int(ts[done]) - now > 60 * 1_000_000_000:
            now = int(ts[done]) - 60 * 1_000_000_000  # a long silence: every short timeout has passed
    score(table.flush(), int(cap.ts_ns[-1]))
    return first, flagged


def test_nmap_scan_flagged_within_one_second(shared_pcaps: Path) -> None:
    first, flagged = flagged_at(shared_pcaps / "attack-nmap-syn-scan.pcap")
    assert "172.16.0.8" in flagged
    assert flagged["172.16.0.8"] - first["172.16.0.8"] < 1_000_000_000


def test_no_benign_source_flagged(shared_pcaps: Path) -> None:
    truth = json.loads((shared_pcaps / "TRUTH.json").read_text())
    benign = [t["file"] for t in truth if t["kind"] != "attack"]
    assert benign
    for name in benign:
        _, flagged = flagged_at(shared_pcaps / name)
        assert not flagged, (name, flagged)
