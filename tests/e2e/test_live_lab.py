"""The live lab end to end (issue 11): real attacks between network namespaces, detected and blocked,
while the benign client keeps working; then `mld-lab down` after a crash leaves nothing behind.

One lab for the module (started through the CLI, ~20 s), the scenarios in order, then the checks
on what they left: kernel sets, artifacts, `mld-rag query`, metrics. Every attacker runs from a
fresh address, so each scenario proves its own block.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO, is_root, wait_for
from libs.lab import attacks, live
from libs.lab.plan import LabSettings

MLD_LAB = str(Path(sys.executable).parent / "mld-lab")
RESULTS: dict[str, list[attacks.AttackerResult]] = {}
HOST_TABLES = ""  # the host's nftables tables before the lab: the lab must add none


def sh(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check, cwd=REPO)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabSettings]:
    """A live lab of its own (temp state, free ports); always taken down, also when a test fails."""
    if not is_root():
        pytest.skip("privileged test: needs root (network namespaces, nftables, XDP)")
    if live.existing_namespaces():
        pytest.fail(f"a live lab is already up ({live.existing_namespaces()}): stop it with `make kill-lab`")
    global HOST_TABLES
    HOST_TABLES = sh("nft", "list", "tables").stdout
    tmp = Path(tempfile.mkdtemp(prefix="mld-live-test-"))
    args = ["--lab-dir", str(tmp / "lab")]
    try:
        up = sh(MLD_LAB, "up", "--mode", "live", *args, "--artifacts-dir", str(tmp / "artifacts"),
                "--ports", "auto", "--timeout", "90", timeout=150)  # fmt: skip
        assert up.returncode == 0, f"mld-lab up failed:\n{up.stdout}\n{up.stderr}"
        settings = LabSettings.model_validate_json((tmp / "lab" / "lab.json").read_text())
        assert settings.mode == "live"
        yield settings
    finally:
        sh(MLD_LAB, "down", *args)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def benign_total(lab: LabSettings) -> dict[str, Any]:
    return live.read_benign(lab)


@pytest.mark.unit
def test_live_settings_validate_against_every_service_model(tmp_path: Path) -> None:
    """The live overrides still fit each service's settings model (caught here, without root)."""
    from libs.common.settings import validate_settings
    from libs.lab.cli import settings_model
    from libs.lab.plan import SERVICES
    from libs.watcher.diff import deep_merge

    lab = LabSettings(lab_dir=tmp_path / "lab", artifacts_dir=tmp_path / "artifacts")
    over = live.live_overrides(lab)
    for svc in SERVICES:
        model = settings_model(svc)
        validate_settings(model, deep_merge(model().model_dump(mode="json"), over[svc]), svc)
    names = [p.name for p in live.live_programs(lab)]
    assert len(names) == len(set(names)) and {"sniffer", "firewall", "benign"} <= set(names)


@pytest.mark.unit
def test_topology_uses_only_our_names_and_test_addresses() -> None:
    """Everything the lab creates is found again by name (crash cleanup) and lives in 198.18.0.0/15."""
    import ipaddress

    net4, net6 = ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")
    cmds = live.topology_commands()
    for ns in live.NAMESPACES:
        assert ns.startswith("mld-") and ["ip", "netns", "add", ns] in cmds
    ifaces = [h.ifname for h in live.HOSTS] + [h.sw_ifname for h in live.HOSTS] + [live.SPAN_TX, live.SPAN_RX]
    assert all(i.startswith("mld-") and len(i) <= 15 for i in ifaces)
    for h in live.HOSTS:
        assert ipaddress.ip_address(h.v4) in net4 and ipaddress.ip_address(h.v6) in net6
    assert all(ipaddress.ip_address(a) in net4 for a in live.ATTACKER_POOL)
    # No command touches the host's own namespace except creating namespaces.
    assert all(
        c[:3] == ["ip", "netns", "add"] or c[:2] == ["ip", "-n"] or c[:3] == ["ip", "netns", "exec"]
        for c in cmds
    )


@pytest.mark.unit
def test_every_attack_is_bounded_and_aimed_at_the_victim_only(tmp_path: Path) -> None:
    lab = LabSettings(lab_dir=tmp_path)
    for name, builders in attacks.SCENARIOS.items():
        for b in builders:
            for a in b(lab, live.ATTACKER_POOL[0]):
                assert a.timeout_s <= 60, name
                assert a.argv[-1] == live.VICTIM.v4 or "--src" in a.argv, (name, a.argv)
                if a.argv[0] == "hping3":
                    assert "-c" in a.argv and "--flood" not in a.argv, a.argv
                if a.argv[0] == "nmap":
                    assert "--host-timeout" in a.argv, a.argv


@pytest.mark.e2e
@pytest.mark.parametrize(
    "scenario", ["portscan", "synflood", "smb-sweep", "ssh-bruteforce", "slow-scan", "mixed"]
)
def test_scenario_is_detected_and_its_attacker_blocked(
    require_root: None, lab: LabSettings, scenario: str
) -> None:
    before = benign_total(lab)
    results = attacks.run_scenario(lab, scenario, block_timeout_s=10.0, settle_s=20.0)
    RESULTS[scenario] = results
    report = "\n".join(line for r in results for line in attacks.format_result(r))
    assert results, report
    for r in results:
        assert r.blocked, f"{r.src} not blocked:\n{report}"
        assert r.detected, f"no kept event for {r.src}:\n{report}"
        assert r.decisions.get("DROP", 0) >= 1, report
        assert r.first_packet_ns and r.latency_ms is not None and r.latency_ms < 10_000, report
    # The benign client kept working while the attack ran.
    after = benign_total(lab)
    assert after.get("http_ok", 0) >= before.get("http_ok", 0)
    print(report)


@pytest.mark.e2e
def test_benign_client_never_blocked_and_still_served(require_root: None, lab: LabSettings) -> None:
    assert RESULTS, "run with the scenario tests (they come first in this module)"
    listing = sh("ip", "netns", "exec", live.NS_VICTIM, "nft", "-j", "list", "table", "inet", live.TABLE)
    assert listing.returncode == 0, listing.stderr
    banned = {
        str(e) if isinstance(e, str) else str(e.get("elem", {}).get("val", e))
        for item in json.loads(listing.stdout)["nftables"]
        if "set" in item
        for e in item["set"].get("elem", [])
    }
    for addr in (live.BENIGN.v4, live.BENIGN.v6, live.VICTIM.v4):
        assert not any(addr == b or f"'{addr}'" in b for b in banned), f"{addr} was blocked: {banned}"
    for r in (r for rs in RESULTS.values() for r in rs):
        assert any(r.src in b for b in banned), f"attacker {r.src} missing from the kernel set {banned}"
    events = attacks.read_events(lab.artifacts_dir, {live.BENIGN.v4, live.BENIGN.v6}, 0)
    assert not [e for e in events if e.get("decision") == "DROP"], "a DROP event for the benign client"
    # Its requests keep succeeding, now and throughout (counted by the client itself).
    start = benign_total(lab)
    wait_for(
        lambda: (
            benign_total(lab).get("http_ok", 0) > start.get("http_ok", 0)
            and benign_total(lab).get("ssh_ok", 0) > start.get("ssh_ok", 0)
        ),
        timeout=20,
        interval=0.2,
        what="new successful benign HTTP and SSH-like requests",
    )
    st = benign_total(lab)
    assert st["http_fail"] == 0 and st["dns_fail"] == 0 and st["ssh_fail"] == 0, st
    assert st["http_ok"] >= 5 and st["dns_ok"] >= 3 and st["ssh_ok"] >= 5, st
    curl = sh("ip", "netns", "exec", live.NS_BENIGN, "curl", "-sS", "-m", "3", "-o", "/dev/null",
              "-w", "%{http_code}", f"http://{live.VICTIM.v4}/")  # fmt: skip
    assert curl.stdout == "200", curl.stderr


@pytest.mark.e2e
def test_artifacts_and_rag_query_find_the_events(require_root: None, lab: LabSettings) -> None:
    scan = RESULTS["portscan"][0]
    days = sorted(p for p in lab.artifacts_dir.iterdir() if p.is_dir())
    pairs = [p for d in days for p in d.glob("event_*.json")]
    assert any(scan.src in p.read_text() for p in pairs[-2000:]), "no artifact names the scanner"
    rag_cfg = lab.config_dir / "rag.json"

    def query() -> list[dict[str, Any]]:
        r = sh(str(lab.venv_bin / "mld-rag"), "query", "--config", str(rag_cfg), "--json",
               f"port scan from {scan.src}", timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return [x for x in json.loads(r.stdout)["results"] if x["src_ip"] == scan.src]

    found = wait_for(query, timeout=30, interval=0.5, what=f"mld-rag query finding {scan.src}")
    assert found[0]["event_id"] and found[0]["decision"] in ("DROP", "ALERT", "ALLOW")


@pytest.mark.e2e
def test_metrics_show_the_counts(require_root: None, lab: LabSettings) -> None:
    p = lab.ports
    assert (live.metric_value(p.metrics_sniffer, "mld_sniffer_packets_total") or 0) > 1000
    # linger 0: the closing ACKs of the benign client's connections are absorbed, not flows
    assert (live.metric_value(p.metrics_sniffer, "mld_sniffer_late_packets_absorbed_total") or 0) > 0
    assert (live.metric_value(p.metrics_ml_detector, "mld_ml_detector_flows_scored_total") or 0) > 100
    attackers = sum(len(rs) for rs in RESULTS.values())
    banned = live.metric_value(p.metrics_firewall, "mld_firewall_banned_addresses") or 0
    assert banned >= attackers, f"firewall reports {banned} bans for {attackers} attackers"
    assert (live.metric_value(p.metrics_firewall, "mld_firewall_decisions_total") or 0) > 0
    assert (live.metric_value(p.metrics_rag_logger, "mld_rag_logger_events_written_total") or 0) > 0


@pytest.mark.e2e
def test_every_service_follows_etcd_live(require_root: None, lab: LabSettings) -> None:
    """The sniffer and the firewall run inside namespaces and still follow the lab's etcd (through
    the unix-socket bridges): all five register, and a hot firewall edit is applied live."""
    from libs.etcd_client import EtcdClient

    client = EtcdClient(lab.etcd_url)

    def registered() -> set[str]:
        return {kv.key.rstrip("/").rsplit("/", 1)[-1] for kv in client.get_prefix("nodes/")}

    names = wait_for(
        lambda: registered() >= {"sniffer", "ml-detector", "rag-logger", "rag", "firewall"} and registered(),
        timeout=20,
        what="every service registered under nodes/",
    )
    rev = client.set("config/firewall", {"timeout_s": 1800.0})

    def applied() -> bool:
        st = [client.decode(kv) for kv in client.get_prefix("status/") if kv.key.endswith("/firewall/config")]
        return bool(st) and all(s.get("result") == "APPLIED" and s.get("revision", 0) >= rev for s in st)

    wait_for(
        applied, timeout=15, what=f"the namespaced firewall applying revision {rev} (registered: {names})"
    )


@pytest.mark.e2e
def test_down_after_a_crash_leaves_nothing(require_root: None, lab: LabSettings) -> None:
    """supervisord and the sniffer die with SIGKILL (XDP stays attached), then `mld-lab down`."""
    pids = [int(x) for x, _ in json.loads((lab.lab_dir / "live-pids.json").read_text())]
    link = sh("ip", "netns", "exec", live.NS_SWITCH, "ip", "-j", "-d", "link", "show", live.SPAN_RX)
    xdp_id = json.loads(link.stdout)[0]["xdp"]["prog"]["id"]
    sup = int((lab.lab_dir / "supervisord.pid").read_text())
    os.kill(sup, signal.SIGKILL)
    sniffer = [
        p for p in live.ns_pids(live.NS_SWITCH) if "mld-sniffer" in Path(f"/proc/{p}/cmdline").read_text()
    ]
    assert sniffer, "the sniffer was not running in its namespace"
    for pid in sniffer:
        os.kill(pid, signal.SIGKILL)
    down = sh(MLD_LAB, "down", "--lab-dir", str(lab.lab_dir))
    assert down.returncode == 0, down.stderr
    assert live.existing_namespaces() == [], "namespaces left behind"
    netns = sh("ip", "netns", "list").stdout
    assert not any(ns in netns for ns in live.NAMESPACES), netns
    links = sh("ip", "-o", "link", "show").stdout
    ours = [h.ifname for h in live.HOSTS] + [h.sw_ifname for h in live.HOSTS] + [live.SPAN_TX, live.SPAN_RX]
    assert not [i for i in ours if f" {i}:" in links or f" {i}@" in links], (
        f"a lab interface remains: {links}"
    )

    def procs_gone() -> bool:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        assert not alive, f"lab processes still alive: {alive}"
        return True

    wait_for(procs_gone, timeout=10, what="every lab process to end")

    def xdp_freed() -> bool:
        progs = json.loads(sh("bpftool", "-j", "prog", "show").stdout or "[]")
        assert xdp_id not in [p.get("id") for p in progs], f"XDP program {xdp_id} still loaded"
        return True

    wait_for(xdp_freed, timeout=10, what="the lab's XDP program to be freed")
    tables = sh("nft", "list", "tables").stdout
    assert tables.count(f"inet {live.TABLE}") <= HOST_TABLES.count(f"inet {live.TABLE}"), tables
    assert not any(s.exists() for s in live.sock_paths(lab).values())


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "Z"
