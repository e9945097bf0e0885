"""Training captures from real tools in network namespaces, labelled by the namespace that sent them.

As root, `make train` builds three namespaces of its own (`mldtr<pid>-vic`, `-atk`, `-ben`; names
unique per run, so parallel runs and the live lab never collide):

    mldtr<pid>-atk (198.18.2.0/24, 2001:db8:2::/64) ─┐
    mldtr<pid>-ben (198.18.3.0/24, 2001:db8:3::/64) ─┴─ bridge br0 in mldtr<pid>-vic
                                                        servers 198.18.0.10-29, 2001:db8::10
                                                        dumpcap on br0 -> <name>.pcap

The victim is the gateway of both client subnets and serves HTTP (python http.server, also a
beacon endpoint on 8080), TLS (openssl s_server), DNS-like UDP and SSH-like TCP (libs/lab/live.py)
and SMB/RPC listeners on a few of its addresses. From the attacker namespace, real tools run
bounded: nmap (SYN, connect, UDP, slow and ping-sweep scans), hping3 (SYN/UDP/ICMP floods at a fixed
rate, SYN sweeps to 445/139/135 over the victim's addresses), SSH login attempts (the lab's
`ssh-guess` and the OpenSSH client) and a curl beacon at a fixed interval. Each attack kind gets its
own source address, so a flow's label is its sender: attacker address -> kind, benign namespace ->
benign, anything else (the victim's ICMP errors, IPv6 link-local chatter) is left out.

Every choice (ports, targets, start times, counts) comes from a seed derived from the capture name;
the packets themselves are real, so their bytes (and sha256) differ between runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("mld.train.netns")
REPO = Path(__file__).resolve().parents[3]  # `python -m libs...` in the namespaces runs from here

TOOLS = ("ip", "nmap", "hping3", "curl", "openssl", "dumpcap", "ethtool")
SERVERS = [f"198.18.0.{i}" for i in range(10, 30)]
VICTIM_V6 = "2001:db8::10"
WEB, C2 = SERVERS[0], SERVERS[-1]
ATK_GW, BEN_GW = "198.18.2.1", "198.18.3.1"
ATK_GW6, BEN_GW6 = "2001:db8:2::1", "2001:db8:3::1"
MAC_BR, MAC_ATK, MAC_BEN = "02:6d:74:72:00:01", "02:6d:74:72:00:66", "02:6d:74:72:00:20"
SMB_HOSTS = SERVERS[:6]  # these answer on 445/139/135; the rest refuse (RST), as a real subnet would
ATTACK_KINDS = (
    "portscan",
    "connect_scan",
    "udp_scan",
    "slow_scan",
    "icmp_sweep",
    "syn_flood",
    "udp_flood",
    "icmp_flood",
    "smb_spread",
    "rpc_spread",
    "ssh_bruteforce",
    "botnet",
)
BENIGN_SRCS = [f"198.18.3.{i}" for i in range(20, 26)]
BENIGN_V6 = "2001:db8:3::20"


class NetnsError(Exception):
    """The namespace capture could not be made; the message says what and how to fix it."""


def unavailable() -> str | None:
    """Why real-tool captures cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "not root (network namespaces need root)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (
            f"missing tools: {', '.join(missing)} (apt-get install nmap hping3 curl openssl tshark ethtool)"
        )
    return None


@dataclass(frozen=True)
class NsPlan:
    """One capture: `duration_s` of benign traffic, plus every attack kind when `attacks`."""

    name: str
    seed: int
    split: str
    duration_s: float
    attacks: bool = True
    kinds: tuple[str, ...] = ATTACK_KINDS


def plan(scale: float = 1.0) -> list[NsPlan]:
    """Three mixed captures (the last held out) and two benign-only ones (the last held out)."""
    d = 45.0 * scale
    return [
        NsPlan("ns-mixed-0", 0, "train", d),
        NsPlan("ns-mixed-1", 1, "train", d),
        NsPlan("ns-mixed-2", 2, "test", d),
        NsPlan("ns-benign-0", 0, "train", d * 0.6, attacks=False),
        NsPlan("ns-benign-1", 1, "test", d * 0.6, attacks=False),
    ]


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"netns/{name}".encode()).digest()[:8], "big")


# ------------------------------------------------------------------------------------ topology


@dataclass(frozen=True)
class Names:
    vic: str
    atk: str
    ben: str

    @classmethod
    def for_pid(cls, pid: int | None = None) -> Names:
        p = f"mldtr{pid if pid is not None else os.getpid()}"
        return cls(f"{p}-vic", f"{p}-atk", f"{p}-ben")

    def all(self) -> tuple[str, str, str]:
        return (self.vic, self.atk, self.ben)


def attacker_addresses(n: int = 3 * len(ATTACK_KINDS) + 4) -> list[str]:
    return [f"198.18.2.{10 + i}" for i in range(n)]


def topology_commands(ns: Names) -> list[list[str]]:
    """Every command that builds the network, in order (pure: tested without root)."""
    cmds: list[list[str]] = [["ip", "netns", "add", n] for n in ns.all()]
    for n in ns.all():
        cmds.append(["ip", "-n", n, "link", "set", "lo", "up"])
        for key in ("all.accept_ra=0", "default.accept_ra=0", "all.forwarding=0"):
            cmds.append(["ip", "netns", "exec", n, "sysctl", "-qw", f"net.ipv6.conf.{key}"])
    # Hosts answer every probe (scans end in bounded time instead of waiting on ICMP rate limits).
    for key in ("net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0", "net.ipv4.ip_forward=0"):
        cmds.append(["ip", "netns", "exec", ns.vic, "sysctl", "-qw", key])
    v = ns.vic
    cmds.append(["ip", "-n", v, "link", "add", "br0", "address", MAC_BR, "type", "bridge", "stp_state", "0"])
    for peer, ifname, port, mac in ((ns.atk, "a0", "p-atk", MAC_ATK), (ns.ben, "b0", "p-ben", MAC_BEN)):
        cmds.append(
            ["ip", "-n", peer, "link", "add", ifname, "address", mac, "type", "veth", "peer", "name",
             port, "netns", v]
        )  # fmt: skip
        cmds.append(["ip", "-n", v, "link", "set", port, "master", "br0", "up"])
        cmds.append(["ip", "-n", peer, "link", "set", ifname, "up"])
        # Segments no larger than the MTU, as a NIC would put them on the wire.
        cmds.append(
            ["ip", "netns", "exec", peer, "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off"]
        )
        cmds.append(
            ["ip", "netns", "exec", v, "ethtool", "-K", port, "tso", "off", "gso", "off", "gro", "off"]
        )
    cmds.append(["ip", "-n", v, "link", "set", "br0", "up"])
    for a in (f"{ATK_GW}/24", f"{BEN_GW}/24", *(f"{s}/32" for s in SERVERS)):
        cmds.append(["ip", "-n", v, "addr", "add", a, "dev", "br0"])
    for a in (f"{ATK_GW6}/64", f"{BEN_GW6}/64", f"{VICTIM_V6}/128"):
        cmds.append(["ip", "-n", v, "addr", "add", a, "dev", "br0", "nodad"])
    for peer, ifname, gw, gw6, mac, srcs, v6 in (
        (ns.atk, "a0", ATK_GW, ATK_GW6, MAC_ATK, attacker_addresses(), "2001:db8:2::66"),
        (ns.ben, "b0", BEN_GW, BEN_GW6, MAC_BEN, BENIGN_SRCS, BENIGN_V6),
    ):
        for s in srcs:  # the first is the primary address (the kernel's source for unbound sockets)
            cmds.append(["ip", "-n", peer, "addr", "add", f"{s}/24", "dev", ifname])
            cmds.append(
                ["ip", "-n", v, "neigh", "replace", s, "lladdr", mac, "dev", "br0", "nud", "permanent"]
            )
        cmds.append(["ip", "-n", peer, "addr", "add", f"{v6}/64", "dev", ifname, "nodad"])
        cmds.append(["ip", "-n", v, "neigh", "replace", v6, "lladdr", mac, "dev", "br0", "nud", "permanent"])
        cmds.append(
            ["ip", "-n", peer, "neigh", "replace", gw, "lladdr", MAC_BR, "dev", ifname, "nud", "permanent"]
        )
        cmds.append(
            ["ip", "-n", peer, "neigh", "replace", gw6, "lladdr", MAC_BR, "dev", ifname, "nud", "permanent"]
        )
        cmds.append(["ip", "-n", peer, "route", "add", "198.18.0.0/24", "via", gw])
        cmds.append(["ip", "-n", peer, "-6", "route", "add", "2001:db8::/64", "via", gw6])
    return cmds


def _run(cmd: list[str], timeout: float = 30) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[:300]}")


def _ns_pids(n: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True, check=False, timeout=10)
    return [int(x) for x in proc.stdout.split() if x.isdigit()]


def destroy(ns: Names) -> None:
    """End what still runs inside our namespaces (ours by construction: unique names) and remove them."""
    present = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    mine = [n for n in ns.all() if n in present]
    pids = sorted({p for n in mine for p in _ns_pids(n)} - {os.getpid()})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(OSError):
                os.kill(p, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)
    for n in mine:
        subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False, timeout=10)


@contextlib.contextmanager
def network(ns: Names) -> Iterator[Names]:
    """The three namespaces, removed on the way out whatever happens."""
    destroy(ns)
    try:
        for cmd in topology_commands(ns):
            _run(cmd)
        yield ns
    finally:
        destroy(ns)


def in_ns(n: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", n, *cmd]


# ------------------------------------------------------------------------------------ servers


def serve_tcp(binds: list[tuple[str, int]], max_s: float) -> int:
    """Accept-and-close listeners (SMB/RPC ports of a few hosts): enough for a handshake and a read."""
    socks = []
    for addr, port in binds:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(512)
        s.setblocking(False)
        socks.append(s)
    end = time.monotonic() + max_s
    import selectors

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while time.monotonic() < end:
        for key, _ in sel.select(0.5):
            with contextlib.suppress(OSError):
                c, _ = key.fileobj.accept()  # type: ignore[union-attr]
                c.settimeout(0.2)
                with contextlib.suppress(OSError):
                    c.recv(512)
                c.close()
    return 0


def _www(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    r = random.Random(7)
    (d / "index.html").write_text("<html><body>" + "lorem ipsum " * 300 + "</body></html>\n")
    for name, size in (("small.bin", 12_000), ("data.bin", 200_000), ("big.bin", 2_000_000)):
        (d / name).write_bytes(r.randbytes(size))
    (d / "beacon").write_text("ok\n")


def _tls_cert(d: Path) -> tuple[Path, Path]:
    key, cert = d / "tls.key", d / "tls.crt"
    if not cert.exists():
        _run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=victim.test", "-days", "2"]
        )  # fmt: skip
    return key, cert


class Procs:
    """Processes this module started; ended by pid (TERM, then KILL) when the capture is done."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log_path: Path | None = None) -> subprocess.Popen[bytes]:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()


def _py() -> str:
    return sys.executable


def start_servers(ns: Names, procs: Procs, work: Path, max_s: float) -> None:
    www = work / "www"
    _www(www)
    key, cert = _tls_cert(work)
    lg = work / "servers.log"
    me = [_py(), "-m", "services.ml_detector.train.netns_capture"]
    v = ns.vic
    procs.start(in_ns(v, _py(), "-m", "http.server", "80", "--bind", "::", "--directory", str(www)), lg)
    procs.start(in_ns(v, _py(), "-m", "http.server", "8080", "--bind", "::", "--directory", str(www)), lg)
    procs.start(in_ns(v, _py(), "-m", "libs.lab.live", "serve-dns"), lg)
    procs.start(in_ns(v, _py(), "-m", "libs.lab.live", "serve-ssh"), lg)
    procs.start(
        in_ns(
            v, "openssl", "s_server", "-quiet", "-www", "-accept", "443", "-key", str(key), "-cert", str(cert)
        ),
        lg,
    )
    binds = ",".join(f"{a}:{p}" for a in SMB_HOSTS for p in (445, 139, 135))
    procs.start(in_ns(v, *me, "serve-tcp", "--binds", binds, "--max-s", str(max_s)), lg)
    # Ready when every TCP server accepts (probed from inside the victim: no packet on br0).
    deadline = time.monotonic() + 20
    probe = (
        "import socket,sys\n"
        "for a,p in (('127.0.0.1',80),('127.0.0.1',8080),('127.0.0.1',22),('127.0.0.1',443),"
        f"('{SMB_HOSTS[0]}',445)):\n"
        "    socket.create_connection((a,p),timeout=1).close()\n"
    )
    while time.monotonic() < deadline:
        if (
            subprocess.run(
                in_ns(v, _py(), "-c", probe), capture_output=True, check=False, cwd=REPO
            ).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise NetnsError(f"the victim's servers did not start within 20 s; see {lg}")


# ------------------------------------------------------------------------------------ traffic


@dataclass
class Step:
    """One sender's tool runs: commands in order from `at_s`, or every `every_s` until `until_s`."""

    kind: str  # attack kind, "" for benign
    ns: str
    src: str
    at_s: float
    cmds: list[list[str]]
    timeout_s: float = 30.0
    every_s: float = 0.0
    until_s: float = 0.0
    exits: list[int] = field(default_factory=list)


def attack_steps(ns: Names, kind: str, src: str, r: random.Random, dur: float) -> Step:
    """The tool runs of one attack kind (bounded in count and time; choices from `r`)."""
    a = ns.atk
    tgt = r.choice(SERVERS[:8])
    nm = ["nmap", "-n", "-Pn", "--max-retries", "1", "-e", "a0", "-S", src]
    at = r.uniform(1.0, max(1.5, dur * 0.45))
    if kind == "portscan":
        lo = r.choice([1, 1, 20, 100])
        return Step(
            kind,
            a,
            src,
            at,
            [[*nm, "-sS", "-T4", "--host-timeout", "25s", "-p", f"{lo}-{lo + r.randint(300, 1000)}", tgt]],
        )
    if kind == "connect_scan":
        ports = f"1-{r.randint(200, 600)}"
        return Step(kind, a, src, at, [[*nm, "-sT", "-T4", "--host-timeout", "25s", "-p", ports, tgt]])
    if kind == "udp_scan":
        ports = ",".join(str(p) for p in sorted({*r.sample(range(1, 1024), r.randint(30, 60)), 53}))
        return Step(kind, a, src, at, [[*nm, "-sU", "-T4", "--host-timeout", "25s", "-p", ports, tgt]])
    if kind == "slow_scan":
        ports = ",".join(str(p) for p in sorted(r.sample(range(1, 10000), r.randint(10, 14))))
        delay = r.choice(["1000ms", "1200ms", "1500ms"])
        return Step(
            kind,
            a,
            src,
            r.uniform(0.5, 3.0),
            [[*nm, "-sS", "--scan-delay", delay, "--host-timeout", "30s", "-p", ports, tgt]],
            35,
        )
    if kind == "icmp_sweep":
        base = r.choice([0, 0, 64])
        return Step(
            kind,
            a,
            src,
            at,
            [
                [
                    "nmap",
                    "-n",
                    "-sn",
                    "-PE",
                    "--max-retries",
                    "1",
                    "-e",
                    "a0",
                    "-S",
                    src,
                    "--host-timeout",
                    "5s",
                    f"198.18.0.{base}/26",
                ]
            ],
        )
    hp = ["hping3", "-q", "-a", src, "-I", "a0"]
    count = str(r.choice([1200, 2000, 3000]))
    gap = r.choice(["u400", "u500", "u800"])
    if kind == "syn_flood":
        return Step(
            kind, a, src, at, [[*hp, "-S", "-p", r.choice(["80", "443", "22"]), "-i", gap, "-c", count, tgt]]
        )
    if kind == "udp_flood":
        return Step(
            kind,
            a,
            src,
            at,
            [
                [
                    *hp,
                    "--udp",
                    "-p",
                    r.choice(["53", "123", "9999"]),
                    "-d",
                    str(r.randint(32, 512)),
                    "-i",
                    gap,
                    "-c",
                    count,
                    tgt,
                ]
            ],
        )
    if kind == "icmp_flood":
        return Step(
            kind, a, src, at, [[*hp, "--icmp", "-d", str(r.randint(56, 1000)), "-i", gap, "-c", count, tgt]]
        )
    if kind in ("smb_spread", "rpc_spread"):
        svc = ["445", "139"] if kind == "smb_spread" else ["135"]
        hosts = r.sample(SERVERS, r.randint(12, 20))
        cmds = [
            [*hp, "-S", "-p", p, "-i", f"u{r.randint(20, 120) * 1000}", "-c", str(r.randint(2, 4)), h]
            for h in hosts
            for p in svc
        ]
        cmds.append(
            [
                "nmap",
                "-n",
                "-Pn",
                "-sS",
                "--max-retries",
                "1",
                "-e",
                "a0",
                "-S",
                src,
                "-p",
                ",".join(svc),
                *hosts[:8],
            ]
        )
        return Step(kind, a, src, at, cmds, 10)
    if kind == "ssh_bruteforce":
        cmds = [
            [_py(), "-m", "libs.lab.attacks", "ssh-guess", "--src", src, "--attempts", str(r.randint(20, 40))]
        ]
        # No sshd here: the OpenSSH client's attempts end at key exchange with the SSH-like server
        # (exit 255), which is what a guesser's connection to a wrong or filtered service looks like.
        ssh = ["ssh", "-b", src, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
               "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=2"]  # fmt: skip
        cmds += [
            [*ssh, f"{u}@{tgt}", "true"]
            for u in r.sample(["root", "admin", "ubuntu", "test", "oracle", "pi"], 4)
        ]
        return Step(kind, a, src, at, cmds, 55)
    if kind == "botnet":
        every = r.choice([1.0, 1.5, 2.0])
        url = f"http://{C2}:8080/beacon?id={r.randint(1000, 9999)}"
        cmd = ["curl", "-s", "-o", "/dev/null", "--interface", src, "-m", "2", url]
        return Step(kind, a, src, r.uniform(0.5, 2.0), [cmd], 5, every_s=every, until_s=dur * 0.95)
    raise NetnsError(f"unknown attack kind {kind!r}")


def benign_steps(ns: Names, r: random.Random, dur: float, status: Path) -> list[Step]:
    """Benign users: the live lab's client (web, DNS, SSH-like session) and curl/TLS/DNS/keepalive ones."""
    b = ns.ben
    steps = [
        Step(
            "",
            b,
            BENIGN_SRCS[0],
            0.0,
            [[_py(), "-m", "libs.lab.live", "benign", "--status", str(status), "--max-s", str(dur)]],
            dur + 10,
        )
    ]
    me = [_py(), "-m", "services.ml_detector.train.netns_capture", "client"]
    for i, src in enumerate(BENIGN_SRCS[1:]):
        steps.append(
            Step(
                "",
                b,
                src,
                r.uniform(0, 3),
                [
                    [
                        *me,
                        "--src",
                        src,
                        "--seed",
                        str(r.randint(0, 2**31)),
                        "--max-s",
                        str(dur - 4),
                        "--profile",
                        str(i),
                    ]
                ],
                dur + 10,
            )
        )
    return steps


def client(src: str, seed: int, max_s: float, profile: int) -> int:
    """A benign user with a seeded schedule: curl downloads (v4 and v6), TLS fetches, DNS lookups,
    an idle keepalive session, and the odd refused connection or aborted (RST) close."""
    r = random.Random(seed)
    end = time.monotonic() + max_s
    keep: socket.socket | None = None
    next_keep = time.monotonic() + r.uniform(2, 6)
    while time.monotonic() < end:
        roll = r.random()
        try:
            if roll < 0.35:
                path = r.choice(["/", "/index.html", "/small.bin", "/data.bin", "/big.bin"])
                host = r.choice([WEB, WEB, f"[{VICTIM_V6}]"])
                iface = src if not host.startswith("[") else BENIGN_V6
                subprocess.run(
                    [
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "--interface",
                        iface,
                        "-m",
                        "5",
                        f"http://{host}{path}",
                    ],
                    timeout=8,
                    check=False,
                )
            elif roll < 0.55:
                subprocess.run(
                    ["curl", "-sk", "-o", "/dev/null", "--interface", src, "-m", "5", f"https://{WEB}/"],
                    timeout=8,
                    check=False,
                )
            elif roll < 0.85:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((src, 0))
                    s.settimeout(1.5)
                    name = r.choice(
                        [
                            b"\x03www\x07example\x03com",
                            b"\x04mail\x07example\x03org",
                            b"\x03api\x04test\x03net",
                        ]
                    )
                    s.sendto(
                        r.randbytes(2) + b"\x01\x00\x00\x01" + bytes(6) + name + b"\x00\x00\x01\x00\x01",
                        (WEB, 53),
                    )
                    with contextlib.suppress(OSError):
                        s.recvfrom(2048)
            elif roll < 0.93 or profile % 2:
                with socket.create_connection((WEB, 22), timeout=3, source_address=(src, 0)) as c:
                    c.recv(256)
                    c.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n" + bytes(1300))
                    c.recv(4096)
                    for _ in range(r.randint(2, 8)):
                        c.sendall(bytes(r.choice([36, 52, 68])))
                        c.recv(4096)
                        time.sleep(r.uniform(0.05, 0.6))
                    if r.random() < 0.3:  # an app that aborts its connection: the close is an RST
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            else:  # an app retrying its one service that is down (refused: SYN, RST), then moving on
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(
                        (WEB, (8443, 8000, 3000)[profile % 3]), timeout=1, source_address=(src, 0)
                    ),
                ):
                    pass
        except (OSError, subprocess.SubprocessError):
            pass
        now = time.monotonic()
        if now >= next_keep:  # an idle session that sends a small keepalive now and then
            try:
                if keep is None:
                    keep = socket.create_connection((WEB, 22), timeout=3, source_address=(src, 0))
                    keep.recv(256)
                keep.sendall(bytes(36))
                keep.recv(4096)
            except OSError:
                keep = None
            next_keep = now + r.uniform(4, 9)
        time.sleep(r.uniform(0.3, 2.5) if profile % 3 else r.uniform(1.0, 4.0))
    if keep is not None:
        keep.close()
    return 0


def _run_step(st: Step, t0: float, stop: threading.Event) -> None:
    if stop.wait(max(0.0, t0 + st.at_s - time.monotonic())):
        return
    while True:
        for cmd in st.cmds:
            if stop.is_set():
                return
            try:
                p = subprocess.run(
                    in_ns(st.ns, *cmd), capture_output=True, timeout=st.timeout_s, check=False, cwd=REPO
                )
                st.exits.append(p.returncode)
            except subprocess.TimeoutExpired:
                st.exits.append(-9)  # killed at its bound: still a valid run
        if not st.every_s:
            return
        nxt = t0 + st.at_s + st.every_s * (len(st.exits))
        if nxt > t0 + st.until_s or stop.wait(max(0.0, nxt - time.monotonic())):
            return


def capture_one(ns: Names, p: NsPlan, out_dir: Path, work: Path) -> dict[str, Any]:
    """Run one planned capture: dumpcap on the victim's bridge while benign users and (when planned)
    every attack kind run; returns its labels."""
    r = random.Random(_seed(p.name))
    path = out_dir / f"{p.name}.pcap"
    path.unlink(missing_ok=True)
    procs = Procs()
    try:
        dump = procs.start(
            in_ns(ns.vic, "dumpcap", "-q", "-P", "-i", "br0", "-s", "262144", "-B", "64", "-w", str(path)),
            work / "dumpcap.log",
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not path.exists() or path.stat().st_size < 24):
            if dump.poll() is not None:
                break
            time.sleep(0.05)
        if not path.exists():
            raise NetnsError(f"dumpcap did not start on br0 in {ns.vic}; see {work / 'dumpcap.log'}")
        time.sleep(0.3)  # dumpcap writes its header just before the capture loop starts
        steps = benign_steps(ns, r, p.duration_s, work / f"{p.name}-benign.json")
        attackers: dict[str, str] = {}
        if p.attacks:
            addrs = attacker_addresses()
            off = (p.seed % 3) * len(ATTACK_KINDS)  # fresh addresses per capture
            for i, kind in enumerate(p.kinds):
                src = addrs[off + i]
                attackers[src] = kind
                steps.append(attack_steps(ns, kind, src, r, p.duration_s))
        stop = threading.Event()
        t0 = time.monotonic()
        threads = [threading.Thread(target=_run_step, args=(s, t0, stop), daemon=True) for s in steps]
        for t in threads:
            t.start()
        hard_end = t0 + p.duration_s + 45
        for t in threads:
            t.join(max(0.1, hard_end - time.monotonic()))
        stop.set()
        time.sleep(1.0)  # the last answers and closes reach the capture
    finally:
        procs.stop()
    if not path.exists() or path.stat().st_size <= 24:
        raise NetnsError(f"capture {path} is empty; see {work / 'dumpcap.log'}")
    return {
        "file": path.name,
        "attackers": attackers,
        "benign": [*BENIGN_SRCS, BENIGN_V6],
        "ignore": [],
        "split": p.split,
        "real": True,
        "seed": p.seed,
        "duration_s": p.duration_s,
        "tool_exits": {s.kind or f"benign:{s.src}": s.exits for s in steps},
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def generate(
    out_dir: Path, plans: list[NsPlan] | None = None, names: Names | None = None
) -> list[dict[str, Any]]:
    """Build the namespaces, run every planned capture, write `labels.json`; namespaces removed after."""
    why = unavailable()
    if why is not None:
        raise NetnsError(f"real-tool captures need root and the tools: {why}")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "run"
    work.mkdir(exist_ok=True)
    plans = plans if plans is not None else plan()
    ns = names or Names.for_pid()
    labels = []
    with network(ns):
        procs = Procs()
        try:
            start_servers(ns, procs, work, sum(p.duration_s + 60 for p in plans))
            for p in plans:
                t = time.monotonic()
                labels.append(capture_one(ns, p, out_dir, work))
                log.info("netns capture done", extra={"capture": p.name, "s": round(time.monotonic() - t, 1)})
        finally:
            procs.stop()
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=1))
    return labels


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m services.ml_detector.train.netns_capture")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve-tcp", help="accept-and-close listeners (inside the victim namespace)")
    s.add_argument("--binds", required=True, help="addr:port,addr:port,...")
    s.add_argument("--max-s", type=float, default=3600)
    c = sub.add_parser("client", help="one benign user (inside the benign namespace)")
    c.add_argument("--src", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-s", type=float, default=60)
    c.add_argument("--profile", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "serve-tcp":
        binds = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in a.binds.split(",")]
        return serve_tcp(binds, a.max_s)
    return client(a.src, a.seed, a.max_s, a.profile)


if __name__ == "__main__":
    sys.exit(_main())
