"""The multi-node lab for real: three node namespaces (sniffer on AF_PACKET, firewall on nftables,
an etcd member each), two detector workers and the rag-logger in a core namespace, an attacker
namespace. A SYN scan seen only at node A ends with the attacker in the nftables sets of nodes
A, B and C with drop_fanout=all, and only at A with drop_fanout=origin."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import wait_for
from libs.lab.multi import MultiLab, MultiPlan, run

pytestmark = pytest.mark.privileged


def _lab(fanout: str) -> Iterator[MultiLab]:
    if not shutil.which("nmap") or not shutil.which("nft"):
        pytest.skip("needs nmap and nft (make setup)")
    tmp = Path(tempfile.mkdtemp(prefix="mld-multi-"))
    lab = MultiLab(
        MultiPlan(
            tmp, prefix=f"mt{os.getpid() % 100000}", with_rag=False, drop_fanout=fanout, table="mld_multi"
        )
    )
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def lab_all(require_root: None) -> Iterator[MultiLab]:
    yield from _lab("all")


def _ready(lab: MultiLab) -> None:
    """Every service runs, every firewall created its table, the etcd members agree."""

    def ok() -> bool:
        assert not lab.exited(), f"exited: {lab.exited()}"
        return all(_table(lab, n) for n in lab.plan.nodes)

    wait_for(ok, 90, interval=0.5, what="the firewall tables of every node")
    for i in range(3):
        assert lab.cluster.members[i].healthy()


def _table(lab: MultiLab, node: str) -> bool:
    out = run(
        ["ip", "netns", "exec", lab.plan.ns(node), "nft", "list", "table", "inet", lab.plan.table],
        check=False,
    )
    return out.returncode == 0


def test_attack_seen_at_a_is_blocked_at_a_b_and_c(lab_all: MultiLab) -> None:
    lab = lab_all
    _ready(lab)
    atk = lab.plan.attacker_addr

    def scanned_and_blocked() -> bool:
        assert not lab.exited(), f"exited: {lab.exited()}"
        if not lab.blocked("a", atk):
            lab.attack("a")  # the detectors connect when their models are loaded: scan again until then
        return all(lab.blocked(n, atk) for n in lab.plan.nodes)

    wait_for(scanned_and_blocked, 120, interval=1.0, what=f"{atk} blocked at a, b and c")
    # The links between namespaces are CURVE: a plaintext worker that announces itself to take
    # node A's flows (the acknowledged protocol's READY) is refused, and node A's sniffer counts it.
    sniffer = f"tcp://{lab.plan.addr('a')}:5571"
    thief = (
        "import zmq; s = zmq.Context().socket(zmq.DEALER); s.connect('%s');"
        " s.send_multipart([b'MLDQ1', b'READY', b'64', b'thief']); s.poll(3000); print(s.poll(0))"
    )
    out = run(["ip", "netns", "exec", lab.plan.core_ns, sys.executable, "-c", thief % sniffer])
    assert out.stdout.strip() == "0", "a plaintext client received flows"

    def refused() -> bool:
        m = run(
            [
                "ip",
                "netns",
                "exec",
                lab.plan.ns("a"),
                "curl",
                "-s",
                f"http://{lab.plan.addr('a')}:9101/metrics",
            ]
        )
        prefix = f'mld_sniffer_zmq_refused_connections_total{{endpoint="{sniffer}",reason='
        return any(line.startswith(prefix) for line in m.stdout.splitlines())

    wait_for(refused, 10, interval=0.2, what="the plaintext client counted as refused at node a")

    # The three agents registered in etcd (leased heartbeats) and are listed by `mld-config nodes`.
    table = lab.nodes_table()
    assert all(f"\n{n} " in "\n" + table and "firewall" in table for n in lab.plan.nodes), table


@pytest.fixture
def lab_origin(require_root: None) -> Iterator[MultiLab]:
    yield from _lab("origin")


def test_origin_policy_blocks_only_where_the_attack_was_seen(lab_origin: MultiLab) -> None:
    lab = lab_origin
    _ready(lab)
    atk = lab.plan.attacker_addr

    def scanned_and_blocked() -> bool:
        assert not lab.exited(), f"exited: {lab.exited()}"
        lab.attack("a")
        return lab.blocked("a", atk)

    wait_for(scanned_and_blocked, 120, interval=1.0, what=f"{atk} blocked at a")
    # Each worker sends an event to its firewalls back to back: had b or c been sent the DROP, it
    # would be in their sets within milliseconds of a's. Watch them for 3 s.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert not lab.blocked("b", atk) and not lab.blocked("c", atk), "origin policy leaked a DROP"
        time.sleep(0.2)
