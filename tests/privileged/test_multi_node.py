"""The multi-node lab for real: three node namespaces (sniffer on AF_PACKET, firewall on nftables,
an etcd member each), two detector workers and the rag-logger in a core namespace, an attacker
namespace. A SYN scan seen only at node A ends with the attacker in the nftables sets of nodes
A, B and C (drop_fanout=all); with drop_fanout=origin only at A."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import wait_for
from libs.lab.multi import MultiLab, MultiPlan

pytestmark = pytest.mark.privileged


def _lab(fanout: str) -> Iterator[MultiLab]:
    if not shutil.which("nmap") or not shutil.which("nft"):
        pytest.skip("needs nmap and nft (make setup)")
    tmp = Path(tempfile.mkdtemp(prefix="mld-multi-"))
    lab = MultiLab(
        MultiPlan(tmp, prefix=f"mt{os.getpid() % 100000}", with_rag=False, drop_fanout=fanout, table="mld_multi")
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
        return all(lab.blocked(n, "0.0.0.0") is False and _table(lab, n) for n in lab.plan.nodes)

    wait_for(ok, 90, interval=0.5, what="the firewall tables of every node")
    for i in range(3):
        assert lab.cluster.members[i].healthy()


def _table(lab: MultiLab, node: str) -> bool:
    from libs.lab.multi import run

    out = run(["ip", "netns", "exec", lab.plan.ns(node), "nft", "list", "table", "inet", lab.plan.table], check=False)
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
    # The attacker never touched b or c: their sniffers saw nothing of it.
    table = lab.nodes_table()
    assert "firewall" in table, table
