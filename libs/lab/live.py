"""The live lab: network namespaces with real traffic, the sniffer on XDP, blocking inside the victim.

Topology (every name starts with `mld-`, so a crashed lab is found and removed by name):

    mld-attacker (198.18.0.66 + pool 198.18.1.0/24) ─┐
    mld-benign   (198.18.0.20)  ──────────────────── mld-switch: bridge mld-br0 ── mld-victim (198.18.0.10)
                                                      │ tc mirror of the victim port (both directions)
                                                      └► mld-span0 ─ mld-span1: XDP flow meter (sniffer)

The sniffer sees both directions of the victim's traffic as received frames on a SPAN port (XDP only
sees ingress, so the victim-side veth alone would show half of every flow). The firewall runs in the
victim namespace (nftables table `inet ml_defender` there, never the host's). Services in a
namespace talk ZeroMQ over ipc:// (unix sockets cross namespaces) and their /metrics are bridged to
127.0.0.1 on the host with socat. The victim serves HTTP, DNS-like UDP and SSH-like TCP; the benign
client uses all three throughout (bounded) and writes its counts to `benign.json`.

Each attack run takes a fresh attacker address from the pool, so earlier bans never hide a
detection. Addresses are static with permanent neighbour entries: no ARP in the measured path.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.lab.control import pid_alive
from libs.lab.plan import LabSettings, Program, etcd_args, etcd_program

PREFIX = "mld-"
NS_SWITCH = "mld-switch"
NS_VICTIM = "mld-victim"
NS_ATTACKER = "mld-attacker"
NS_BENIGN = "mld-benign"
NAMESPACES = (NS_SWITCH, NS_VICTIM, NS_ATTACKER, NS_BENIGN)
BRIDGE = "mld-br0"
SPAN_TX, SPAN_RX = "mld-span0", "mld-span1"
TABLE = "ml_defender"
PREFIX_LEN_V4, PREFIX_LEN_V6 = 16, 64
ATTACKER_POOL = [f"198.18.1.{i}" for i in range(1, 255)]
HTTP_PORT, DNS_PORT, SSH_PORT = 80, 53, 22


@dataclass(frozen=True)
class Host:
    """One end host: its namespace, its veth end (and the switch's), MAC and addresses."""

    ns: str
    ifname: str
    sw_ifname: str
    mac: str
    v4: str
    v6: str


VICTIM = Host(NS_VICTIM, "mld-v0", "mld-sw-v", "02:6d:6c:64:00:0a", "198.18.0.10", "2001:db8::10")
BENIGN = Host(NS_BENIGN, "mld-b0", "mld-sw-b", "02:6d:6c:64:00:14", "198.18.0.20", "2001:db8::20")
ATTACKER = Host(NS_ATTACKER, "mld-a0", "mld-sw-a", "02:6d:6c:64:00:42", "198.18.0.66", "2001:db8::66")
HOSTS = (VICTIM, BENIGN, ATTACKER)


class LiveError(Exception):
    """A live-lab operation failed; the message says what and how to fix it."""


def run(cmd: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LiveError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[:400]}")
    return proc


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


# ------------------------------------------------------------------------------------ topology


def topology_commands() -> list[list[str]]:
    """Every command that builds the network, in order (pure: tested and printed without root)."""
    cmds: list[list[str]] = [["ip", "netns", "add", ns] for ns in NAMESPACES]
    cmds += [["ip", "-n", ns, "link", "set", "lo", "up"] for ns in NAMESPACES]  # metrics, ipc peers
    sysctl = ["sysctl", "-qw"]
    # The switch is L2 only: no IPv6 autoconf chatter from its ports.
    cmds.append(in_ns(NS_SWITCH, *sysctl, "net.ipv6.conf.all.disable_ipv6=1"))
    cmds.append(in_ns(NS_SWITCH, *sysctl, "net.ipv6.conf.default.disable_ipv6=1"))
    cmds.append(["ip", "-n", NS_SWITCH, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])
    cmds.append(["ip", "-n", NS_SWITCH, "link", "set", BRIDGE, "up"])
    for h in HOSTS:
        cmds.append(in_ns(h.ns, *sysctl, "net.ipv6.conf.default.accept_ra=0"))
        cmds.append(in_ns(h.ns, *sysctl, "net.ipv6.conf.all.accept_ra=0"))
        cmds.append(
            ["ip", "-n", h.ns, "link", "add", h.ifname, "address", h.mac, "type", "veth", "peer", "name",
             h.sw_ifname, "netns", NS_SWITCH]
        )  # fmt: skip
        cmds.append(["ip", "-n", NS_SWITCH, "link", "set", h.sw_ifname, "master", BRIDGE, "up"])
        cmds.append(["ip", "-n", h.ns, "link", "set", h.ifname, "up"])
        cmds.append(["ip", "-n", h.ns, "addr", "add", f"{h.v4}/{PREFIX_LEN_V4}", "dev", h.ifname])
        cmds.append(["ip", "-n", h.ns, "addr", "add", f"{h.v6}/{PREFIX_LEN_V6}", "dev", h.ifname, "nodad"])
        # Segments no larger than the MTU, as a NIC would put them on the wire.
        cmds.append(in_ns(h.ns, "ethtool", "-K", h.ifname, "tso", "off", "gso", "off", "gro", "off"))
        for other in HOSTS:
            if other is not h:
                for addr in (other.v4, other.v6):
                    cmds.append(
                        ["ip", "-n", h.ns, "neigh", "replace", addr, "lladdr", other.mac, "dev", h.ifname,
                         "nud", "permanent"]
                    )  # fmt: skip
    # SPAN port: both directions of the victim's port mirrored onto a veth the sniffer reads
    # (u32 match-all: cls_matchall is not in every kernel build).
    cmds.append(["ip", "-n", NS_SWITCH, "link", "add", SPAN_TX, "type", "veth", "peer", "name", SPAN_RX])
    for dev in (SPAN_TX, SPAN_RX):
        cmds.append(["ip", "-n", NS_SWITCH, "link", "set", dev, "arp", "off", "up"])
    cmds.append(in_ns(NS_SWITCH, "tc", "qdisc", "add", "dev", VICTIM.sw_ifname, "clsact"))
    for hook in ("ingress", "egress"):
        cmds.append(
            in_ns(NS_SWITCH, "tc", "filter", "add", "dev", VICTIM.sw_ifname, hook, "protocol", "all", "u32", "match", "u32", "0", "0", "action",
                  "mirred", "egress", "mirror", "dev", SPAN_TX)
        )  # fmt: skip
    return cmds


def existing_namespaces() -> list[str]:
    """Our namespaces present now (by their well-known names)."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(n for n in os.listdir("/run/netns") if n in NAMESPACES)
    return []


def create_network() -> None:
    """Build the topology from nothing (crash leftovers are removed first); all or nothing.

    The namespace names are global: one live lab per host. A running one is never replaced."""
    if os.geteuid() != 0:
        raise LiveError("live mode needs root (network namespaces, XDP, nftables); use --mode replay")
    busy = [ns for ns in existing_namespaces() if ns_pids(ns)]
    if busy:
        raise LiveError(
            f"a live lab is already running here (namespaces {', '.join(busy)}); stop it first with "
            "`mld-lab down --lab-dir DIR` (its lab dir) or `python -m libs.lab.live down`"
        )
    destroy_network()
    try:
        for cmd in topology_commands():
            run(cmd)
        _batch(NS_ATTACKER, [f"addr add {a}/{PREFIX_LEN_V4} dev {ATTACKER.ifname}" for a in ATTACKER_POOL])
        for h in (VICTIM, BENIGN):
            _batch(
                h.ns,
                [
                    f"neigh replace {a} lladdr {ATTACKER.mac} dev {h.ifname} nud permanent"
                    for a in ATTACKER_POOL
                ],
            )
    except BaseException:
        destroy_network()
        raise


def _batch(ns: str, lines: list[str]) -> None:
    proc = subprocess.run(
        ["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise LiveError(f"ip -n {ns} -batch failed: {proc.stderr.strip()[:400]}")


def ns_pids(ns: str) -> list[int]:
    """Processes living in one of our namespaces (the lab's programs, by construction)."""
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in proc.stdout.split() if x.isdigit()]


def destroy_network(timeout_s: float = 10) -> dict[str, list[Any]]:
    """Remove every namespace of the lab (their veths, XDP program, nftables table go with them),
    after ending the processes still inside (TERM, then KILL). Idempotent; safe after a crash."""
    gone: dict[str, list[Any]] = {"namespaces": [], "killed": []}
    present = existing_namespaces()
    pids = sorted({p for ns in present for p in ns_pids(ns)} - {os.getpid()})
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            gone["killed"].append(pid)
    for ns in present:
        run(["ip", "netns", "del", ns], check=False)
        gone["namespaces"].append(ns)
    return gone


# ------------------------------------------------------------------------------------ programs


def sock_paths(lab: LabSettings) -> dict[str, Path]:
    """ipc:// endpoints (unix sockets are reachable from every namespace) and metrics bridges."""
    d = lab.lab_dir / "sock"
    return {
        "flows": d / "flows.sock",
        "firewall": d / "firewall.sock",
        "metrics_sniffer": d / "metrics-sniffer.sock",
        "metrics_firewall": d / "metrics-firewall.sock",
        "etcd": d / "etcd.sock",
        "events": d / "config-events.sock",
    }


def live_overrides(lab: LabSettings) -> dict[str, dict[str, Any]]:
    """The settings each service gets in live mode, on top of its own defaults.

    Export timing is tightened so an attack is blocked within the latency target: closed TCP
    flows leave the kernel at their close (not 2 s later; tombstones absorb their late packets),
    unanswered ones 100 ms after their last packet, and a partial batch waits at most 10 ms."""
    p = lab.ports
    s = sock_paths(lab)
    t = "tcp://127.0.0.1:"

    def metrics(port: int) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": port}

    return {
        "sniffer": {
            "metrics": metrics(p.metrics_sniffer),  # inside mld-switch, bridged to the host
            "capture": {"source": "xdp", "interface": SPAN_RX},
            # Closed flows leave on their TERM notice and unanswered ones on their START notice's
            # half-open check; the whole-map sweep is only for idle/active timeouts.
            "xdp": {"mode": "generic", "sweep_interval_ms": 1000},
            "flows": {
                "tcp_close_linger_s": 0.0,
                # The ACK that ends a FIN exchange (or a retransmitted RST) then arrives after its
                # flow left: the tombstone absorbs it instead of making it a one-packet flow of the
                # benign client that the models were not trained on.
                "tombstone_ttl_s": 3.0,
                # Unanswered probes (filtered ports, SYN floods) leave 100 ms after their last packet.
                "half_open_timeout_s": 0.1,
                "export_interval_ms": 10,
                "export_batch_size": 256,
                # The sweep reads the whole map: quiet answered flows leave after 30 s, not 120 s,
                # so it stays small (unanswered SYNs of blocked attackers leave by half-open).
                "idle_timeout_s": 30.0,
            },
            "output": {"endpoint": f"ipc://{s['flows']}", "bind": True},
        },
        "ml-detector": {
            "metrics": metrics(p.metrics_ml_detector),
            "input": {"endpoint": f"ipc://{s['flows']}", "bind": False},
            "firewall": {"endpoint": f"ipc://{s['firewall']}", "bind": False},
            "rag_logger": {"endpoint": f"{t}{p.rag_logger}", "bind": False},
            # TreeSHAP runs before a batch's events leave (~5 ms per event here): a small budget
            # keeps a scan's first batch from waiting on explanations (the rest are counted).
            "explain": {"max_per_batch": 2},
            "batch": {"max_flows": 256},  # a scan's first flows are scored before the rest arrive
        },
        "rag-logger": {
            "metrics": metrics(p.metrics_rag_logger),
            "input": {"endpoint": f"{t}{p.rag_logger}", "bind": True},
            "artifacts_root": str(lab.artifacts_dir),
        },
        "rag": {
            "metrics": metrics(p.metrics_rag),
            "ingest": {"artifacts_root": str(lab.artifacts_dir)},
            "index": {"dir": str(lab.lab_dir / "rag-index")},
            "query": {"endpoint": f"{t}{p.rag_query}"},
        },
        "firewall": {
            "metrics": metrics(p.metrics_firewall),  # inside mld-victim, bridged to the host
            "input": {"endpoint": f"ipc://{s['firewall']}", "bind": True},
            "backend": "nftables",
            "table": TABLE,
            "batch_interval_ms": 2.0,
        },
    }


def live_programs(lab: LabSettings) -> list[Program]:
    """etcd, the five services (sniffer and firewall inside their namespaces), the metrics bridges,
    the victim's servers and the benign client."""
    py = str(lab.venv_bin / "python")
    env = {"PYTHONUNBUFFERED": "1"}
    socks = sock_paths(lab)

    def svc(name: str, script: str, order: int, ns: str | None = None) -> Program:
        # Every service follows etcd live; inside a namespace, 127.0.0.1:<etcd> and
        # 127.0.0.1:<rag-logger> are the bridges of host_bridges() to the host's loopback.
        cmd = [str(lab.venv_bin / script), "run", "--config", str(lab.config_dir / f"{name}.json")]
        cmd += etcd_args(lab)
        return Program(name, in_ns(ns, *cmd) if ns else cmd, environment=env, priority=order)

    progs = [
        etcd_program(lab),
        *host_bridges(lab),
        svc("rag-logger", "mld-rag-logger", 20),
        svc("firewall", "mld-firewall", 21, NS_VICTIM),
        svc("rag", "mld-rag", 22),
        svc("ml-detector", "mld-detector", 30),
        svc("sniffer", "mld-sniffer", 40, NS_SWITCH),
    ]
    for name, ns, port in (
        ("sniffer", NS_SWITCH, lab.ports.metrics_sniffer),
        ("firewall", NS_VICTIM, lab.ports.metrics_firewall),
    ):
        sock = socks[f"metrics_{name}"]
        progs.append(
            Program(
                f"metrics-{name}-ns",
                in_ns(ns, "socat", f"UNIX-LISTEN:{sock},fork,unlink-early", f"TCP:127.0.0.1:{port}"),
                priority=45,
                stopwaitsecs=5,
            )
        )
        progs.append(
            Program(
                f"metrics-{name}",
                ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{sock}"],
                priority=46,
                stopwaitsecs=5,
            )
        )
    www = lab.lab_dir / "www"
    me = [py, "-m", "libs.lab.live"]
    progs += [
        Program(
            "victim-http",
            in_ns(
                NS_VICTIM, py, "-m", "http.server", str(HTTP_PORT), "--bind", "::", "--directory", str(www)
            ),
            environment=env,
            priority=50,
            stopwaitsecs=5,
        ),
        Program(
            "victim-dns", in_ns(NS_VICTIM, *me, "serve-dns"), environment=env, priority=50, stopwaitsecs=5
        ),
        Program(
            "victim-ssh", in_ns(NS_VICTIM, *me, "serve-ssh"), environment=env, priority=50, stopwaitsecs=5
        ),
        Program(
            "benign",
            in_ns(NS_BENIGN, *me, "benign", "--status", str(benign_status_path(lab))),
            environment=env,
            priority=60,
            stopwaitsecs=5,
        ),
    ]
    return progs


def host_bridges(lab: LabSettings) -> list[Program]:
    """etcd and the rag-logger's ConfigChange socket, reachable from the sniffer's and the
    firewall's namespaces at the same 127.0.0.1 ports as on the host.

    A namespace has its own loopback; a unix socket is reachable from every namespace, so socat
    carries the byte streams (etcd's HTTP gateway, ZeroMQ's ZMTP) through one: the services
    inside the namespaces then take the same `--etcd` and `--config-events` as those outside."""
    socks = sock_paths(lab)
    progs = []
    for name, port in (("etcd", lab.ports.etcd_client), ("events", lab.ports.rag_logger)):
        sock = socks[name]
        progs.append(
            Program(
                f"bridge-{name}",
                ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early", f"TCP:127.0.0.1:{port}"],
                priority=5,
                stopwaitsecs=5,
            )
        )
        for ns in (NS_SWITCH, NS_VICTIM):
            progs.append(
                Program(
                    f"bridge-{name}-{ns}",
                    in_ns(
                        ns,
                        "socat",
                        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                        f"UNIX-CONNECT:{sock}",
                    ),
                    priority=6,
                    stopwaitsecs=5,
                )
            )
    return progs


def benign_status_path(lab: LabSettings) -> Path:
    return lab.lab_dir / "benign.json"


def prepare_dirs(lab: LabSettings) -> None:
    for d in (lab.lab_dir / "sock", lab.lab_dir / "www"):
        d.mkdir(parents=True, exist_ok=True)
    (lab.lab_dir / "www" / "index.html").write_text("<html><body>ML Defender lab victim</body></html>\n")
    (lab.lab_dir / "www" / "data.bin").write_bytes(random.Random(7).randbytes(48_000))
    with contextlib.suppress(FileNotFoundError):
        benign_status_path(lab).unlink()


def read_benign(lab: LabSettings) -> dict[str, Any]:
    """The benign client's counts ({} before its first report)."""
    try:
        return dict(json.loads(benign_status_path(lab).read_text()))
    except (OSError, ValueError):
        return {}


def start(lab: LabSettings, timeout_s: float) -> LabSettings:
    """Build the network, write every service's settings and supervisord's, start and wait.

    Settings are validated before anything is created (two-phase); on any failure the network
    and the processes are removed again so a retry starts clean."""
    from libs.lab import control
    from libs.lab.cli import build_configs, write_configs
    from libs.lab.plan import SERVICES, render_supervisord

    lab = lab.model_copy(update={"mode": "live", "firewall_backend": "nftables", "pcaps": []})
    docs = build_configs(lab, live_overrides(lab), "live lab settings")
    for d in (lab.lab_dir, lab.log_dir, lab.artifacts_dir):
        d.mkdir(parents=True, exist_ok=True)
    prepare_dirs(lab)
    write_configs(lab, docs)
    (lab.lab_dir / "lab.json").write_text(lab.model_dump_json(indent=2))
    programs = live_programs(lab)
    if lab.prometheus:  # scrapes the same 127.0.0.1 ports (namespaced services via their bridges)
        from libs.lab.prometheus import start_prometheus

        p = lab.ports
        prom = start_prometheus(
            lab.lab_dir,
            {s: f"127.0.0.1:{p.metrics(s)}" for s in SERVICES},
            etcd_target=f"127.0.0.1:{p.etcd_client}",
            port=p.prometheus,
        )
        if prom is not None:
            programs.append(prom.program())
    lab.supervisor_conf.write_text(render_supervisord(lab, programs))
    create_network()
    try:
        control.start_supervisord(lab, lab.venv_bin)
        control.wait_running(lab, [p.name for p in programs], timeout_s)
        wait_pipeline(lab, timeout_s)
        record_pids(lab, [st.pid for st in control.program_states(lab) if st.pid])
    except BaseException:
        control.shutdown(lab)
        destroy_network()
        raise
    return lab


def _start_time(pid: int) -> int | None:
    """Kernel start time of a process (with the pid, identifies it even after pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pids_path(lab: LabSettings) -> Path:
    return lab.lab_dir / "live-pids.json"


def record_pids(lab: LabSettings, pids: list[int]) -> None:
    """Remember supervisord and its programs by (pid, start time): if supervisord dies, `down`
    still ends exactly these processes and never a stranger that reused a pid."""
    from libs.lab import control

    sup = control.supervisord_pid(lab)
    entries = [[p, t] for p in [*([sup] if sup else []), *pids] if (t := _start_time(p)) is not None]
    _pids_path(lab).write_text(json.dumps(entries))


def kill_recorded(lab: LabSettings, timeout_s: float = 10) -> list[int]:
    """End the recorded lab processes still alive (TERM, then KILL); returns the pids ended."""
    try:
        entries = json.loads(_pids_path(lab).read_text())
    except (OSError, ValueError):
        return []
    alive = [int(p) for p, t in entries if _start_time(int(p)) == t and pid_alive(int(p))]
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in alive):
        time.sleep(0.05)
    for pid in alive:
        if pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        _pids_path(lab).unlink()
    return alive


def metric_value(port: int, name: str, timeout_s: float = 2.0) -> float | None:
    """Sum of a metric's samples on a service's /metrics (None when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_pipeline(lab: LabSettings, timeout_s: float) -> None:
    """Ready means traffic really flows end to end: every /metrics answers and the detector has
    scored flows of the benign client (so the sniffer's XDP path and both sockets work)."""
    from libs.lab.plan import SERVICES

    deadline = time.monotonic() + timeout_s
    missing: list[str] = list(SERVICES)
    while time.monotonic() < deadline:
        missing = [s for s in SERVICES if metric_value(lab.ports.metrics(s), "python_info") is None]
        scored = metric_value(lab.ports.metrics_ml_detector, "mld_ml_detector_flows_scored_total") or 0
        if not missing and scored > 0:
            return
        time.sleep(0.25)
    raise LiveError(
        f"the live pipeline is not flowing after {timeout_s:.0f}s (metrics not answering: {missing or 'none'}; "
        f"no flow scored by the detector); see {lab.log_dir}/sniffer.log and ml-detector.log"
    )


def print_where(lab: LabSettings) -> None:
    """Where to look once the live lab is up."""
    from libs.lab.plan import SERVICES

    p = lab.ports
    print("ML Defender live lab is up: attacker, benign client and victim in network namespaces.")
    print(f"  victim     {VICTIM.v4} / {VICTIM.v6} in {NS_VICTIM} (HTTP :80, DNS-like UDP :53, SSH-like :22)")
    print(f"  benign     {BENIGN.v4} in {NS_BENIGN}; counts in {benign_status_path(lab)}")
    print(f"  attacker   {ATTACKER.v4} + pool 198.18.1.1-254 in {NS_ATTACKER}")
    print(f"  sniffer    XDP (generic) on {SPAN_RX} in {NS_SWITCH}, a mirror of the victim's port")
    print(f"  firewall   nftables table inet {TABLE} inside {NS_VICTIM}:")
    print(f"             ip netns exec {NS_VICTIM} nft list set inet {TABLE} ban_v4")
    print(
        "  attack     mld-lab attack {portscan,synflood,smb-sweep,ssh-bruteforce,ssh-bruteforce-paced,slow-scan,mixed}"
    )
    print("  status     make status-lab      logs  make logs-lab")
    for svc in SERVICES:
        print(f"  metrics    http://127.0.0.1:{p.metrics(svc)}/metrics   ({svc})")
    if lab.prometheus:
        print(f"  prometheus http://127.0.0.1:{p.prometheus}/   (when installed)")
    print(f"  artifacts  {lab.artifacts_dir}/YYYY-MM-DD/event_<id>.json")
    print(f'  ask        .venv/bin/mld-rag query --config {lab.config_dir}/rag.json "port scan events"')
    print("  stop       make kill-lab")


def teardown(lab: LabSettings) -> dict[str, list[Any]]:
    """What `mld-lab down` adds for a live lab: namespaces, what runs in them, our sockets.

    A replay lab's `down` leaves them alone: the namespaces are global and may be another lab's."""
    if lab.mode != "live":
        return {"namespaces": [], "killed": []}
    leftover = kill_recorded(lab)  # after a supervisord crash its programs outlive it
    gone = destroy_network() if existing_namespaces() else {"namespaces": [], "killed": []}
    gone["killed"] = sorted(set(gone["killed"]) | set(leftover))
    for path in sock_paths(lab).values():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return gone


# ------------------------------------------------------------------------------------ namespaces in-process


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the calling thread inside namespace `ns` (setns is per thread); back to the host after.

    Call it only from a thread made for the purpose: sockets opened inside keep their namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns}") as target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise LiveError(f"setns into {ns} failed: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            libc.setns(home.fileno(), _CLONE_NEWNET)


# ------------------------------------------------------------------------------------ victim servers


def serve_dns(port: int = DNS_PORT, max_s: float = 6 * 3600) -> int:
    """DNS-like UDP responder: answers each query with a fixed-size record (bounded in time)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.settimeout(1.0)
    end = time.monotonic() + max_s
    while time.monotonic() < end:
        try:
            data, addr = s.recvfrom(2048)
        except TimeoutError:
            continue
        s.sendto(data[:2] + b"\x81\x80" + data[4:] + bytes(16 + (data[-1] % 48 if data else 0)), addr)
    return 0


def serve_ssh(port: int = SSH_PORT, max_s: float = 6 * 3600) -> int:
    """SSH-like server: banner, a key-exchange-sized reply, then answers every client message.

    Enough of the protocol's rhythm (sizes and turns) for flows that look like SSH; not a shell."""
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(256)
    srv.settimeout(1.0)
    end = time.monotonic() + max_s

    def session(c: socket.socket) -> None:
        with c:
            c.settimeout(30)
            try:
                c.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
                turn = 0
                while time.monotonic() < end:
                    data = c.recv(4096)
                    if not data:
                        return
                    if data.startswith(b"SSH-") and len(data) < 64:
                        continue  # the client's bare banner needs no answer
                    turn += 1
                    if turn == 1:
                        c.sendall(bytes(1080))  # server key exchange
                    elif turn == 2:
                        c.sendall(bytes(640))
                    else:
                        c.sendall(bytes(52 if len(data) < 120 else 36))
            except OSError:
                return

    while time.monotonic() < end:
        try:
            c, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=session, args=(c,), daemon=True).start()
    return 0


# ------------------------------------------------------------------------------------ benign client


def benign(status: Path, max_s: float = 4 * 3600, max_requests: int = 200_000) -> int:
    """Normal users of the victim, throughout: web pages and downloads, DNS lookups, an SSH-like
    interactive session. Bounded in time and count; counts go to `status` every second."""
    stats: dict[str, Any] = {
        "http_ok": 0,
        "http_fail": 0,
        "dns_ok": 0,
        "dns_fail": 0,
        "ssh_ok": 0,
        "ssh_fail": 0,
        "last_error": "",
        "started": time.time(),
    }
    lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    r = random.Random(20)
    end = time.monotonic() + max_s

    def count(kind: str, ok: bool, err: str = "") -> None:
        with lock:
            stats[f"{kind}_{'ok' if ok else 'fail'}"] += 1
            stats["last_" + kind] = time.time()
            if not ok:
                stats["last_error"] = f"{kind}: {err}"

    def total() -> int:
        return sum(v for k, v in stats.items() if k.endswith(("_ok", "_fail")) and isinstance(v, int))

    def web() -> None:
        while not stop.is_set() and time.monotonic() < end and total() < max_requests:
            path = r.choice(["/", "/", "/data.bin"])
            host = r.choice([VICTIM.v4, VICTIM.v4, f"[{VICTIM.v6}]"])
            try:
                with urllib.request.urlopen(f"http://{host}:{HTTP_PORT}{path}", timeout=3) as resp:
                    resp.read()
                count("http", resp.status == 200, f"status {resp.status}")
            except OSError as exc:
                count("http", False, str(exc))
            stop.wait(r.uniform(1.0, 3.0))

    def dns() -> None:
        while not stop.is_set() and time.monotonic() < end and total() < max_requests:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                q = (
                    r.randbytes(2)
                    + b"\x01\x00\x00\x01"
                    + bytes(6)
                    + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
                )
                for attempt in (1, 2):  # a resolver retries once after a timeout
                    try:
                        s.sendto(q, (VICTIM.v4, DNS_PORT))
                        s.recvfrom(2048)
                        count("dns", True)
                        break
                    except OSError as exc:
                        if attempt == 2:
                            count("dns", False, str(exc))
            stop.wait(r.uniform(2.0, 5.0))

    def ssh() -> None:
        while not stop.is_set() and time.monotonic() < end and total() < max_requests:
            try:
                with socket.create_connection((VICTIM.v4, SSH_PORT), timeout=5) as c:
                    c.recv(256)
                    c.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
                    c.sendall(bytes(1400))
                    c.recv(4096)
                    c.sendall(bytes(48))
                    c.recv(4096)
                    session_end = time.monotonic() + r.uniform(60, 180)
                    while not stop.is_set() and time.monotonic() < min(session_end, end):
                        c.sendall(bytes(r.choice([36, 52, 68])))  # keystrokes
                        c.recv(4096)
                        count("ssh", True)
                        stop.wait(r.uniform(0.5, 4.0))
                    c.shutdown(socket.SHUT_WR)
            except OSError as exc:
                count("ssh", False, str(exc))
                stop.wait(1.0)

    # Start once the victim's servers answer (they start beside us): a refusal then would be ours.
    ready_by = time.monotonic() + 30
    while time.monotonic() < ready_by and not stop.is_set():
        try:
            for port in (HTTP_PORT, SSH_PORT):
                socket.create_connection((VICTIM.v4, port), timeout=1).close()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.settimeout(0.5)
                probe.sendto(b"\x00\x01\x01\x00", (VICTIM.v4, DNS_PORT))
                probe.recvfrom(2048)
            break
        except OSError:
            stop.wait(0.2)
    threads = [threading.Thread(target=f, daemon=True) for f in (web, dns, ssh)]
    for t in threads:
        t.start()
    tmp = status.with_suffix(".tmp")
    while not stop.wait(1.0) and time.monotonic() < end:
        with lock:
            tmp.write_text(json.dumps(stats))
        tmp.replace(status)
    stop.set()
    return 0


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m libs.lab.live", description="live-lab helper programs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve-dns")
    sub.add_parser("serve-ssh")
    b = sub.add_parser("benign")
    b.add_argument("--status", type=Path, required=True)
    b.add_argument("--max-s", type=float, default=4 * 3600)
    sub.add_parser("down", help="remove the lab's namespaces and what runs inside them")
    a = ap.parse_args(argv)
    if a.cmd == "serve-dns":
        return serve_dns()
    if a.cmd == "serve-ssh":
        return serve_ssh()
    if a.cmd == "benign":
        return benign(a.status, a.max_s)
    print(json.dumps(destroy_network()))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
