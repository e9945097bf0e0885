"""Parity: a shared pcap replayed into a veth, captured by XDP and by AF_PACKET, gives the flows of
the pcap path (extract_flows) — same flow keys, same packet and byte counts, same non-timing features.

Timing features (durations, inter-arrival times) are not compared: tcpreplay --topspeed does not
keep the capture's pacing. The botnet capture is left out: it carries live malware traffic and is
not replayed anywhere (PROVENANCE.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from xdp_helpers import Capture, VethPair, record_json, veth_pair

from helpers import is_root
from services.sniffer.flows import extract_flows

pytestmark = pytest.mark.privileged

PCAPS = (
    "attack-ftp-bruteforce.pcap",
    "attack-icmp-ping-sweep.pcap",
    "attack-nmap-syn-scan.pcap",
    "attack-ssh-bruteforce.pcap",
    "benign-smb-file-transfer.pcap",
    "benign-smb-windows10-session.pcap",
    "benign-ssh-session.pcap",
    "benign-web-dns-lan.pcap",
    "benign-web-pageload-espn.pcapng",
)
TIMING = ("duration_ms", "piat_ms")


def flow_table(records: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    """Multiset of (key, packet/byte counts, non-timing features) per flow record."""
    rows: Counter[tuple[Any, ...]] = Counter()
    for r in records:
        feats = tuple(sorted((k, v) for k, v in r["features"].items() if not k.endswith(TIMING)))
        key = (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["protocol_number"], r["vlan_id"])
        rows[(key, feats)] += 1
    return rows


def keyed_counts(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[int, int]]:
    out: dict[tuple[Any, ...], tuple[int, int]] = {}
    for r in records:
        key = (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["protocol_number"], r["vlan_id"])
        p, b = out.get(key, (0, 0))
        out[key] = (p + r["features"]["bidirectional_packets"], b + r["features"]["bidirectional_bytes"])
    return out


@pytest.fixture(scope="module")
def pair() -> Any:
    if not is_root():  # module scope is set up before the function-scoped require_root could skip
        pytest.skip("privileged test: needs root (network namespaces, XDP)")
    with veth_pair() as p:
        yield p


def capture(
    pair: VethPair, source: str, pcap: Path, sent: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cap = Capture(pair, source)
    try:
        cap.wait_ready()
        pair.replay(pcap)
        cap.wait_packets(sent)
        stats = cap.stop()
    finally:
        cap.kill()
    return cap.records, stats


@pytest.mark.parametrize("name", PCAPS)
def test_xdp_and_afpacket_match_pcap_path(
    require_root: None, shared_pcaps: Path, pair: VethPair, name: str
) -> None:
    pcap = shared_pcaps / name
    ex = extract_flows([pcap])
    assert ex.error is None, ex.error
    expected = [record_json(r) for r in ex.records]
    sent = ex.stats["packets"]
    for source in ("xdp", "afpacket"):
        records, stats = capture(pair, source, pcap, sent)
        seen = stats["packets"]
        assert seen == sent, f"{source}: {seen} frames seen, {sent} sent"
        assert keyed_counts(records) == keyed_counts(expected), f"{source}: keys or packet/byte counts differ"
        assert flow_table(records) == flow_table(expected), f"{source}: non-timing features differ"
        assert len(records) == len(expected)
