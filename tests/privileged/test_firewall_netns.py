"""The firewall against real nftables, inside network namespaces this test creates.

Topology: namespace H (the "internet": 198.18.0.1, 198.19.5.1, 2001:db8:1::1, 2001:db8:5::1)
and namespace V (the victim: 198.18.0.2, 2001:db8:1::2) joined by a veth pair. The firewall runs
inside V (`ip netns exec`), so only V's ruleset is ever touched; deleting the namespaces removes
everything. Blocking is checked with the traffic itself: ping and TCP from H to V.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import REPO, wait_for
from libs.common.events import ip_bytes
from libs.common.zmqio import Pusher, SocketSettings
from ml_defender.v1 import detection_pb2

pytestmark = pytest.mark.privileged
TABLE = "mld_test"
V_ADDRS = ["198.18.0.2/24", "2001:db8:1::2/64"]
H_ADDRS = ["198.18.0.1/24", "2001:db8:1::1/64", "198.19.5.1/32", "2001:db8:5::1/128"]


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Lab:
    h: str
    v: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    n_configs: int = 0

    def inv(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.v, *args, check=check, timeout=timeout)

    def reachable(self, src: str, dst: str = "") -> bool:
        """One ping from H (source `src`) to V; False when the victim drops it."""
        dst = dst or ("2001:db8:1::2" if ":" in src else "198.18.0.2")
        r = sh(
            "ip", "netns", "exec", self.h, "ping", "-n", "-c", "1", "-W", "0.5", "-I", src, dst, check=False
        )
        return r.returncode == 0

    def tcp_ok(self, src: str, port: int) -> bool:
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(0.5); s.bind((sys.argv[1],0))\n"
            "sys.exit(s.connect_ex(('198.18.0.2', int(sys.argv[2]))))"
        )
        r = sh("ip", "netns", "exec", self.h, sys.executable, "-c", code, src, str(port), check=False)
        return r.returncode == 0

    def config(self, **kw: object) -> tuple[Path, str]:
        self.n_configs += 1
        endpoint = f"ipc://{self.tmp}/fw{self.n_configs}.sock"
        doc: dict[str, object] = {
            "backend": "nftables",
            "table": TABLE,
            "input": {"endpoint": endpoint, "bind": True},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "timeout_s": 3,
            "jitter_fraction": 0,
            "refresh_min_s": 3600,
            "batch_interval_ms": 2,
            "allow": {"peers": [], "cidrs": []},
        }
        doc.update(kw)
        path = self.tmp / f"fw{self.n_configs}.json"
        path.write_text(json.dumps(doc))
        return path, endpoint

    def cli(self, cfg: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.inv(sys.executable, "-m", "services.firewall", *args, "--config", str(cfg), check=check)

    def start(self, cfg: Path) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{cfg.stem}-{len(self.procs)}.log"
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.v,
                sys.executable,
                "-m",
                "services.firewall",
                "run",
                "--config",
                str(cfg),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        self.procs.append(proc)

        def ready() -> bool:
            assert proc.poll() is None, f"firewall exited: {log.read_text()[-800:]}"
            return "firewall running" in log.read_text()

        wait_for(ready, 15, what="firewall start")
        return proc, log

    def elements(self) -> dict[str, dict[str, object]]:
        r = self.inv("nft", "-j", "list", "table", "inet", TABLE, check=False)
        if r.returncode != 0:
            assert "No such file or directory" in r.stderr, r.stderr
            return {}  # not created yet
        out = json.loads(r.stdout)
        found: dict[str, dict[str, object]] = {}
        for item in out["nftables"]:
            for e in item.get("set", {}).get("elem", []):
                body = e["elem"]
                val = body["val"]
                key = val if isinstance(val, str) else f"{val['prefix']['addr']}/{val['prefix']['len']}"
                found[key] = body
        return found


@pytest.fixture
def lab(require_root: None, tmp_path: Path) -> Iterator[Lab]:
    tag = f"{os.getpid() % 100000}{int(time.monotonic() * 1000) % 1000}"
    h, v = f"mldfw-h{tag}", f"mldfw-v{tag}"
    lab = Lab(h, v, tmp_path)
    try:
        sh("ip", "netns", "add", h)
        sh("ip", "netns", "add", v)
        sh(
            "ip",
            "link",
            "add",
            f"fwh{tag}",
            "netns",
            h,
            "type",
            "veth",
            "peer",
            "name",
            f"fwv{tag}",
            "netns",
            v,
        )
        for ns, dev, addrs in ((h, f"fwh{tag}", H_ADDRS), (v, f"fwv{tag}", V_ADDRS)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            for a in addrs:
                sh("ip", "-n", ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", v, "route", "add", "198.19.5.0/24", "via", "198.18.0.1")
        sh("ip", "-n", v, "-6", "route", "add", "2001:db8:5::/48", "via", "2001:db8:1::1")
        wait_for(lambda: lab.reachable("198.18.0.1") and lab.reachable("2001:db8:1::1"), 10, what="veth up")
        yield lab
    finally:
        for p in lab.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        sh("ip", "netns", "del", h, check=False)
        sh("ip", "netns", "del", v, check=False)


def drop_event(src: str, captured_ns: int | None = None) -> detection_pb2.DetectionEvent:
    ev = detection_pb2.DetectionEvent(event_id="t", decision=detection_pb2.DECISION_DROP)
    ev.flow.key.src_addr = ip_bytes(src) if src else b"\x01\x02"
    ev.timestamps.captured_ns = captured_ns if captured_ns is not None else time.time_ns()
    return ev


def pusher(endpoint: str) -> Pusher:
    return Pusher("firewall_test", SocketSettings(endpoint=endpoint, linger_ms=1000))


def test_drop_decision_blocks_the_source_until_the_timeout(lab: Lab) -> None:
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.v, sys.executable, "-m", "http.server", "--bind", "198.18.0.2", "18080"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.procs.append(server)
    wait_for(lambda: lab.tcp_ok("198.18.0.1", 18080), 10, what="victim TCP server")
    cfg, endpoint = lab.config(timeout_s=4)
    lab.start(cfg)
    push = pusher(endpoint)
    try:
        t0 = time.monotonic()
        push.send(drop_event("198.18.0.1"))
        wait_for(lambda: not lab.reachable("198.18.0.1"), 5, what="ping dropped after DROP")
        assert not lab.tcp_ok("198.18.0.1", 18080)
        assert lab.reachable("2001:db8:1::1")  # only the banned source is dropped
        assert "198.18.0.1" in lab.elements()
        wait_for(lambda: lab.reachable("198.18.0.1"), 8, what="ping passes again after the timeout")
        assert time.monotonic() - t0 >= 3.0
        assert lab.tcp_ok("198.18.0.1", 18080)
        assert "198.18.0.1" not in lab.elements()
    finally:
        push.close()


def test_allow_listed_never_blocked_and_invalid_refused(lab: Lab) -> None:
    cfg, endpoint = lab.config(
        timeout_s=120, allow={"peers": ["http://198.19.5.1:2379"], "cidrs": ["2001:db8:1::1"]}
    )
    _proc, log = lab.start(cfg)
    push = pusher(endpoint)
    try:
        for src in ("198.19.5.1", "2001:db8:1::1", "127.0.0.1", "198.18.0.2", "::1", "fe80::1", ""):
            push.send(drop_event(src))
        push.send(drop_event("2001:db8:5::1"))  # a sentinel: events are handled in order
        wait_for(lambda: not lab.reachable("2001:db8:5::1"), 5, what="sentinel blocked")
    finally:
        push.close()
    assert set(lab.elements()) == {"2001:db8:5::1"}
    assert lab.reachable("198.19.5.1") and lab.reachable("2001:db8:1::1")
    text = log.read_text()
    assert text.count('"reason": "allow_listed"') == 6 and text.count('"reason": "invalid"') == 1
    assert "198.19.5.1 is allow-listed" in text

    r = lab.cli(
        cfg, "block", "--json", "198.18.7.0/33", "198.19.5.1", "198.18.0.5/24", "0.0.0.0", "198.18.40.9"
    )
    assert r.returncode == 1
    results = {x["target"]: x for x in json.loads(r.stdout)["results"]}
    assert (
        results["198.18.7.0/33"]["reason"] == "invalid"
        and "not a valid prefix" in results["198.18.7.0/33"]["error"]
    )
    assert (
        results["198.18.0.5/24"]["reason"] == "invalid" and "host bits" in results["198.18.0.5/24"]["error"]
    )
    assert results["0.0.0.0"]["reason"] == "invalid"
    assert results["198.19.5.1"]["reason"] == "allow_listed"
    assert results["198.18.40.9"]["result"] == "queued"  # valid ones in the same call still apply
    assert set(lab.elements()) == {"2001:db8:5::1", "198.18.40.9"}


@pytest.mark.parametrize("interface", ["libnftables", "cli"])
def test_ipv6_and_cidr_blocks_end_to_end(lab: Lab, interface: str) -> None:
    cfg, _ = lab.config(timeout_s=60, nft_interface=interface)
    r = lab.cli(cfg, "block", "--json", "198.19.5.0/24", "2001:db8:5::/48", "2001:db8:1::1")
    assert r.returncode == 0, r.stderr
    assert not lab.reachable("198.19.5.1")
    assert not lab.reachable("2001:db8:5::1")
    assert not lab.reachable("2001:db8:1::1")
    assert lab.reachable("198.18.0.1")
    listed = json.loads(lab.cli(cfg, "list", "--json").stdout)["bans"]
    assert {b["target"]: b["kind"] for b in listed} == {
        "198.19.5.0/24": "cidr",
        "2001:db8:5::/48": "cidr",
        "2001:db8:1::1": "host",
    }
    # a wider prefix replaces the narrower one (interval sets may not overlap)
    r = lab.cli(cfg, "block", "--json", "198.19.0.0/16")
    assert r.returncode == 0, r.stderr + r.stdout
    assert {"198.19.0.0/16"} <= set(lab.elements()) and "198.19.5.0/24" not in lab.elements()
    assert not lab.reachable("198.19.5.1")
    r = lab.cli(cfg, "unblock", "--json", "198.19.0.0/16", "2001:db8:5::/48", "2001:db8:1::1")
    assert r.returncode == 0, r.stderr
    assert lab.reachable("198.19.5.1") and lab.reachable("2001:db8:5::1") and lab.reachable("2001:db8:1::1")
    assert lab.elements() == {}


def test_restart_keeps_bans_with_their_remaining_timeout(lab: Lab) -> None:
    # A long batch interval: the ban is still pending when SIGTERM arrives, so the drain must commit it.
    cfg, endpoint = lab.config(timeout_s=40, batch_interval_ms=9_000, batch_size=10_000)
    proc, log = lab.start(cfg)
    push = pusher(endpoint)
    push.send(drop_event("198.18.0.1"))
    push.send(drop_event("2001:db8:5::1"))
    push.close()
    time.sleep(0.3)  # checking an absence: the ban must not exist before the stop
    assert lab.elements() == {}
    assert lab.reachable("198.18.0.1")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert "drained_ops" in log.read_text()
    before = lab.elements()
    assert set(before) == {"198.18.0.1", "2001:db8:5::1"}
    assert not lab.reachable("198.18.0.1")

    time.sleep(1.2)  # let the remaining time visibly run down
    cfg2, _ = lab.config(timeout_s=40, batch_interval_ms=2)
    _proc2, log2 = lab.start(cfg2)
    assert '"elements": 2' in log2.read_text()  # reconciled from the kernel
    after = lab.elements()
    assert set(after) == set(before)  # nothing flushed by the restart
    for key in before:
        assert after[key]["timeout"] == 40
        assert int(str(after[key]["expires"])) < int(str(before[key]["expires"]))  # not re-armed
    assert not lab.reachable("198.18.0.1")
    listed = json.loads(lab.cli(cfg2, "list", "--json").stdout)["bans"]
    assert all(30 <= b["expires_s"] < 40 for b in listed)


def test_killing_the_firewall_mid_batch_leaves_the_kernel_consistent(lab: Lab) -> None:
    n = 10_000
    targets = [f"198.18.{100 + i // 250}.{1 + i % 250}" for i in range(n)]
    cfg, _ = lab.config(timeout_s=600, batch_size=n, max_elements_v4=n + 10)
    argv = [
        "ip",
        "netns",
        "exec",
        lab.v,
        sys.executable,
        "-m",
        "services.firewall",
        "block",
        "--config",
        str(cfg),
    ]
    t0 = time.monotonic()
    r = subprocess.run([*argv, *targets], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    full = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-500:]
    assert len(lab.elements()) == n
    lab.inv("nft", "flush", "set", "inet", TABLE, "ban_v4")
    # A second, warm run: the first one pays for cold imports, and kill points taken from it would
    # fall after the end of the later (faster) runs.
    t0 = time.monotonic()
    subprocess.run([*argv, *targets], cwd=REPO, capture_output=True, timeout=120, check=True)
    full = min(full, time.monotonic() - t0)
    lab.inv("nft", "flush", "set", "inet", TABLE, "ban_v4")
    killed = 0
    # Kill points spread over the run; the commit is near its end, so most land before or inside it.
    for frac in (0.3, 0.5, 0.6, 0.8, 0.9, 0.97):
        proc = subprocess.Popen(
            [*argv, *targets], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        lab.procs.append(proc)
        time.sleep(full * frac)
        if proc.poll() is None:
            proc.kill()
            killed += 1
        proc.wait(30)
        count = len(lab.elements())
        assert count in (0, n), f"partial transaction visible: {count} elements after kill at {frac:.0%}"
        rules = lab.inv("nft", "list", "chain", "inet", TABLE, "input", check=False).stdout
        assert rules.count("drop") in (0, 4)  # the setup transaction is all or nothing too
        if count:
            lab.inv("nft", "flush", "set", "inet", TABLE, "ban_v4")
    assert killed >= 2
    rec = lab.cli(cfg, "reconcile", "--json", check=True)  # a restart after the kills works
    assert json.loads(rec.stdout)["elements"] == 0


def test_ipset_backend_blocks_and_unblocks(lab: Lab) -> None:
    cfg, _ = lab.config(backend="ipset", timeout_s=60)
    r = lab.cli(cfg, "block", "--json", "198.18.0.1", "2001:db8:5::/48")
    assert r.returncode == 0, r.stderr
    assert not lab.reachable("198.18.0.1") and not lab.reachable("2001:db8:5::1")
    assert lab.reachable("198.19.5.1")
    listed = {b["target"] for b in json.loads(lab.cli(cfg, "list", "--json").stdout)["bans"]}
    assert listed == {"198.18.0.1", "2001:db8:5::/48"}
    r = lab.cli(cfg, "unblock", "198.18.0.1", "2001:db8:5::/48")
    assert r.returncode == 0, r.stderr
    assert lab.reachable("198.18.0.1") and lab.reachable("2001:db8:5::1")


def _table_intact(lab: Lab) -> None:
    """Our table, its four sets and both chains with their four drop rules are all there."""
    doc = json.loads(lab.inv("nft", "-j", "list", "table", "inet", TABLE).stdout)["nftables"]
    sets = {i["set"]["name"] for i in doc if "set" in i}
    assert sets == {"ban_v4", "ban_v4_net", "ban_v6", "ban_v6_net"}, sets
    chains = {i["chain"]["name"] for i in doc if "chain" in i}
    assert chains == {"input", "forward"}, chains
    for chain in chains:
        rules = [i["rule"] for i in doc if "rule" in i and i["rule"]["chain"] == chain]
        assert len(rules) == 4 and all(any("drop" in e for e in r["expr"]) for r in rules), rules


def _committed_bursts(log: Path, first_of: dict[str, int]) -> set[int]:
    """Bursts whose transaction the service logged as committed (it logs after the kernel said yes)."""
    out = set()
    for line in log.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:  # the last line may be cut by the SIGKILL
            continue
        if doc.get("msg") == "transaction committed" and doc.get("banned"):
            out.add(first_of[doc["banned"][0]])
    return out


def test_sigkill_of_the_running_service_mid_batch_leaves_the_kernel_consistent(lab: Lab) -> None:
    """`mld-firewall run` SIGKILLed at random moments while bursts of DROP events are being committed.

    Each burst is exactly `batch_size` new sources and the batch window is long, so the service's
    transaction k holds exactly burst k: after every kill each burst must be in the kernel whole or
    not at all, every burst the service logged as committed must be there, and a restart must
    reconcile without flushing or re-arming anything.
    """
    import random

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    size, kills, per_phase = 1000, 12, 2
    opts = {
        "timeout_s": 600,
        "batch_size": size,
        "batch_interval_ms": 10_000,
        "max_elements_v4": 100_000,
        "reconcile_interval_s": 0,
        "log_level": "info",
    }
    base = int.from_bytes(ip_bytes("198.18.16.0"), "big")
    bursts: list[list[str]] = []
    first_of: dict[str, int] = {}
    type_name = detection_pb2.DetectionEvent.DESCRIPTOR.full_name.encode()

    def new_burst() -> list[bytes]:
        k = len(bursts)
        addrs = [str(ipaddress.ip_address(base + k * size + i)) for i in range(size)]
        bursts.append(addrs)
        first_of[addrs[0]] = k
        return [drop_event(a).SerializeToString() for a in addrs]

    def check(
        before: dict[str, dict[str, object]], committed: set[int], when: str
    ) -> dict[str, dict[str, object]]:
        _table_intact(lab)
        now = lab.elements()
        for key, body in now.items():
            assert body.get("timeout") == 600 and 0 < int(str(body["expires"])) <= 600, (when, key, body)
            assert body.get("comment") == "mld o=1", (when, key, body)
        counts = [sum(a in now for a in b) for b in bursts]
        assert all(c in (0, size) for c in counts), (
            f"{when}: a batch applied partially: {counts} (seed {seed})"
        )
        assert all(counts[k] == size for k in committed), f"{when}: acknowledged burst missing: {counts}"
        assert len(now) == sum(counts), f"{when}: elements that no burst asked for"
        assert set(before) <= set(now), f"{when}: bans lost: {sorted(set(before) - set(now))[:5]}"
        for key in before:  # the kernel's own clock runs on; nothing was re-armed
            assert int(str(now[key]["expires"])) <= int(str(before[key]["expires"])), (when, key)
        return now

    # calibration: send -> commit line of one burst, warm (the first one pays for lazy imports)
    cfg, endpoint = lab.config(**opts)
    proc, log = lab.start(cfg)
    push = pusher(endpoint)
    for k in range(2):
        frames = new_burst()
        t0 = time.monotonic()
        for f in frames:
            push.sock.send_multipart([type_name, f])
        wait_for(lambda k=k: k in _committed_bursts(log, first_of), 20, what=f"burst {k} committed")
        span = time.monotonic() - t0
    push.close()
    seen = check({}, {0, 1}, "calibration")

    in_flight = 0  # kills that caught at least one burst not yet logged as committed
    unlogged = 0
    for kill in range(kills):
        push = Pusher("firewall_test", SocketSettings(endpoint=endpoint, linger_ms=0))
        frames = [f for _ in range(per_phase) for f in new_burst()]
        # random, but mostly near the end of a burst, where its transaction goes to the kernel
        delay = span * (rng.randint(1, per_phase) + rng.uniform(-0.4, 0.1))
        t0 = time.monotonic()
        for f in frames:
            push.sock.send_multipart([type_name, f])
        time.sleep(max(0.0, delay - (time.monotonic() - t0)))  # a random moment, not a condition
        proc.kill()
        proc.wait(10)
        push.close()
        committed = _committed_bursts(log, first_of)
        in_flight += len(bursts) - 1 not in committed
        seen = check(seen, committed, f"after kill {kill} at {delay * 1000:.0f} ms")
        # in the kernel but not logged yet: the kill fell right after a commit
        phase = range(len(bursts) - per_phase, len(bursts))
        unlogged += sum(1 for k in phase if bursts[k][0] in seen and k not in committed)
        # restart: reconcile must take the kernel's bans as they are
        cfg, endpoint = lab.config(**opts)
        proc, log = lab.start(cfg)
        reconciled = [
            json.loads(ln) for ln in log.read_text().splitlines() if "reconciled with the kernel" in ln
        ]
        got = reconciled[0]["elements"] if reconciled else None
        assert got == len(seen), f"restart {kill} reconciled {got} bans, the kernel held {len(seen)}"
        seen = check(seen, set(), f"after restart {kill}")
    assert in_flight >= 3, f"only {in_flight} of {kills} kills landed while a batch was in flight"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    check(seen, set(), "after the last stop")
    print(
        f"seed {seed}: {kills} kills, {in_flight} with a batch in flight, {unlogged} right after a "
        f"commit, {len(seen)} bans kept, burst span {span * 1000:.0f} ms"
    )
