"""`mld-lab attack <scenario>`: bounded attacks with real tools from mld-attacker against the victim only.

Each run takes fresh addresses from the attacker's pool (earlier bans never hide a detection),
watches the attacker's own veth for the first attack packet (kernel timestamp, AF_PACKET inside
mld-attacker) and polls the victim's nftables set for the attacker's element (libnftables inside
mld-victim, every 2 ms). Latency is the difference of the two; both are CLOCK_REALTIME.
What was detected is read back from the rag-logger's JSON lines (the events the pipeline kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from libs.lab import live
from libs.lab.plan import LabSettings

VICTIM = live.VICTIM.v4
IFACE = live.ATTACKER.ifname
CLOSED_PORTS = (21, 23, 25, 110, 135, 443, 1433, 3306, 3389, 5432, 5900, 8080)


@dataclass(frozen=True)
class Attack:
    """One tool run from one attacker address."""

    role: str
    argv: list[str]
    timeout_s: float


def _py(lab: LabSettings) -> str:
    return str(lab.venv_bin / "python")


def portscan(lab: LabSettings, src: str) -> list[Attack]:
    argv = ["nmap", "-n", "-Pn", "-sS", "-T4", "--max-retries", "1", "--host-timeout", "20s",
            "-e", IFACE, "-S", src, "-p", "1-1000", VICTIM]  # fmt: skip
    return [Attack("portscan", argv, 30)]


def synflood(lab: LabSettings, src: str) -> list[Attack]:
    # 2,000 SYN/s for 0.75 s, to the open web port: rate-limited and bounded.
    argv = ["hping3", "-q", "-S", "-p", str(live.HTTP_PORT), "-a", src, "-I", IFACE, "-i", "u500",
            "-c", "1500", VICTIM]  # fmt: skip
    return [Attack("synflood", argv, 20)]


def smb_sweep(lab: LabSettings, src: str) -> list[Attack]:
    # SMB connection attempts on 445 then 139, a new source port each (hping3 increments it).
    base = ["hping3", "-q", "-S", "-a", src, "-I", IFACE, "-i", "u20000", "-c", "8"]
    return [
        Attack("smb-445", [*base, "-p", "445", VICTIM], 15),
        Attack("smb-139", [*base, "-p", "139", VICTIM], 15),
    ]


def ssh_bruteforce(lab: LabSettings, src: str) -> list[Attack]:
    # Four sessions at once and no pause between guesses: hydra's recommended setting for SSH
    # (`-t 4`; its default is 16 tasks), the common shape of a brute force.
    argv = [_py(lab), "-m", "libs.lab.attacks", "ssh-guess", "--src", src, "--attempts", "40",
            "--tasks", "4", "--gap-s", "0"]  # fmt: skip
    return [Attack("ssh-bruteforce", argv, 60)]


def ssh_bruteforce_paced(lab: LabSettings, src: str) -> list[Attack]:
    # A cautious guesser: two sessions, 0.3 s between guesses. Its first two guesses look like a
    # user's logins; the third is the first that tells it apart, so it cannot be blocked before
    # ~0.3 s after its first packet, whatever the pipeline's speed.
    argv = [_py(lab), "-m", "libs.lab.attacks", "ssh-guess", "--src", src, "--attempts", "40",
            "--tasks", "2", "--gap-s", "0.3"]  # fmt: skip
    return [Attack("ssh-bruteforce-paced", argv, 60)]


def slow_scan(lab: LabSettings, src: str) -> list[Attack]:
    # One probe every 1.2 s: never more than 9 attempts in the fast detector's 10 s window, so
    # none of its rules (> 10 ports, >= 10 attempts for the RST ratio) can fire.
    ports = ",".join(str(p) for p in CLOSED_PORTS)
    argv = ["nmap", "-n", "-Pn", "-sS", "--scan-delay", "1200ms", "--max-retries", "0",
            "--host-timeout", "40s", "-e", IFACE, "-S", src, "-p", ports, VICTIM]  # fmt: skip
    return [Attack("slow-scan", argv, 45)]


Builder = Callable[[LabSettings, str], list[Attack]]
SCENARIOS: dict[str, tuple[Builder, ...]] = {
    "portscan": (portscan,),
    "synflood": (synflood,),
    "smb-sweep": (smb_sweep,),
    "ssh-bruteforce": (ssh_bruteforce,),
    "ssh-bruteforce-paced": (ssh_bruteforce_paced,),
    "slow-scan": (slow_scan,),
    "mixed": (portscan, synflood, smb_sweep),  # three attackers at once, benign traffic on
}


@dataclass
class AttackerResult:
    """What happened to one attacker address."""

    scenario: str
    src: str
    tools: list[str]
    first_packet_ns: int = 0
    blocked_ns: int = 0
    latency_ms: float | None = None
    blocked: bool = False
    events: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    attack_types: dict[str, int] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)
    max_final_score: float = 0.0
    tool_exit: list[int] = field(default_factory=list)
    stages_ms: dict[str, float] = field(default_factory=dict)  # first DROP event, from first packet

    @property
    def detected(self) -> bool:
        return self.events > 0


# ------------------------------------------------------------------------------------ pool


def next_sources(lab: LabSettings, n: int) -> list[str]:
    """`n` attacker addresses never used before in this lab (a counter in the lab directory)."""
    path = lab.lab_dir / "attack-pool.json"
    try:
        used = int(json.loads(path.read_text())["next"])
    except (OSError, ValueError, KeyError):
        used = 0
    pool = live.ATTACKER_POOL
    if used + n > len(pool):
        raise live.LiveError(
            f"attacker address pool exhausted ({len(pool)} runs); restart the lab (make kill-lab run-lab)"
        )
    path.write_text(json.dumps({"next": used + n}))
    return pool[used : used + n]


# ------------------------------------------------------------------------------------ watchers

_SO_TIMESTAMPNS = 35
_ETH_P_ALL = 0x0003  # outgoing frames reach only ETH_P_ALL taps


class FirstPacket(threading.Thread):
    """Kernel timestamp of the first IPv4 packet each watched source sends, seen on the attacker's
    veth from inside mld-attacker (outgoing frames reach packet sockets too)."""

    def __init__(self, sources: list[str]) -> None:
        super().__init__(daemon=True)
        self.want = {socket.inet_aton(s): s for s in sources}
        self.first: dict[str, int] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error = ""

    def run(self) -> None:
        try:
            with live.entered(live.NS_ATTACKER):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
                s.bind((IFACE, 0))
            s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            s.settimeout(0.1)
        except OSError as exc:
            self.error = str(exc)
            self.ready.set()
            return
        self.ready.set()
        with s:
            while not self.stop.is_set() and len(self.first) < len(self.want):
                try:
                    data, anc, _, _ = s.recvmsg(64, socket.CMSG_SPACE(16))
                except TimeoutError:
                    continue
                is_ip = len(data) >= 34 and data[12:14] == b"\x08\x00"
                src = self.want.get(data[26:30]) if is_ip else None
                if src is None or src in self.first:
                    continue
                ts = time.time_ns()
                for level, kind, raw in anc:
                    if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(raw) >= 16:
                        sec, nsec = struct.unpack("qq", raw[:16])
                        ts = sec * 1_000_000_000 + nsec
                self.first[src] = ts


class BlockWatch(threading.Thread):
    """Time each source's element appears in the victim's nftables set (polled every 2 ms)."""

    def __init__(self, sources: list[str], timeout_s: float, table: str = live.TABLE) -> None:
        super().__init__(daemon=True)
        self.sources = sources
        self.timeout_s = timeout_s
        self.table = table
        self.seen: dict[str, int] = {}
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error = ""

    def run(self) -> None:
        from services.firewall.backends.nftables import LibNft
        from services.firewall.errors import BackendError

        try:
            with live.entered(live.NS_VICTIM):
                nft = LibNft()
                self.ready.set()
                end = time.monotonic() + self.timeout_s
                while (
                    not self.stop.is_set() and time.monotonic() < end and len(self.seen) < len(self.sources)
                ):
                    for src in self.sources:
                        if src in self.seen:
                            continue
                        with contextlib.suppress(BackendError):
                            nft.run(f"get element inet {self.table} ban_v4 {{ {src} }}")
                            self.seen[src] = time.time_ns()
                    time.sleep(0.002)
                nft.close()
        except (OSError, live.LiveError) as exc:
            self.error = str(exc)
        finally:
            self.ready.set()


# ------------------------------------------------------------------------------------ events


def read_events(artifacts: Path, sources: set[str], since_ns: int) -> list[dict[str, Any]]:
    """Kept events whose flow's initiator is one of `sources` (today's and yesterday's JSON lines)."""
    out: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for day in sorted({(now - timedelta(days=d)).strftime("%Y-%m-%d") for d in (0, 1)}):
        path = artifacts / day / f"events-{day}.jsonl"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if not any(s in line for s in sources):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line still being appended
            if ev.get("src_ip") in sources:
                out.append(ev)
    return out


def _summarise(res: AttackerResult, events: list[dict[str, Any]]) -> None:
    mine = [e for e in events if e.get("src_ip") == res.src]
    res.events = len(mine)
    res.decisions = dict(Counter(str(e.get("decision")) for e in mine))
    res.attack_types = dict(Counter(str(e.get("attack_type") or "-") for e in mine))
    res.rules = dict(Counter(r for e in mine for r in e.get("rules", [])))
    res.max_final_score = max((float(e.get("final_score", 0)) for e in mine), default=0.0)
    drops = [e for e in mine if e.get("decision") == "DROP" and e.get("stage_ns", {}).get("scored")]
    if drops and res.first_packet_ns:
        st = min(drops, key=lambda e: int(e["stage_ns"]["scored"]))["stage_ns"]
        res.stages_ms = {
            k: round((int(st[k]) - res.first_packet_ns) / 1e6, 3)
            for k in ("captured", "exported", "scored")
            if st.get(k)
        }
        if res.blocked_ns:
            res.stages_ms["blocked"] = round((res.blocked_ns - res.first_packet_ns) / 1e6, 3)


# ------------------------------------------------------------------------------------ running


def run_scenario(
    lab: LabSettings, name: str, block_timeout_s: float = 20.0, settle_s: float = 3.0
) -> list[AttackerResult]:
    """Run one scenario to its end (bounded), wait for the blocks, and report per attacker."""
    if name not in SCENARIOS:
        raise live.LiveError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    if live.NS_ATTACKER not in live.existing_namespaces():
        raise live.LiveError("the live lab is not up: run `mld-lab up --mode live` (as root) first")
    builders = SCENARIOS[name]
    sources = next_sources(lab, len(builders))
    plans = [(src, b(lab, src)) for src, b in zip(sources, builders, strict=True)]
    first = FirstPacket(sources)
    block = BlockWatch(sources, block_timeout_s + max(a.timeout_s for _, p in plans for a in p))
    for t in (first, block):
        t.start()
        t.ready.wait(5)
    for t in (first, block):
        if t.error:
            raise live.LiveError(f"cannot watch the lab ({type(t).__name__}): {t.error}")
    started_ns = time.time_ns()
    results = [AttackerResult(name, src, [a.role for a in p]) for src, p in plans]
    runners = [
        threading.Thread(target=_run_attacks, args=(p, res), daemon=True)
        for (_, p), res in zip(plans, results, strict=True)
    ]
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    # The tools are done; give the pipeline a bounded moment to block whoever it caught.
    deadline = time.monotonic() + block_timeout_s
    while time.monotonic() < deadline and len(block.seen) < len(sources):
        time.sleep(0.02)
    block.stop.set()
    first.stop.set()
    block.join(5)
    first.join(5)
    # Kept events reach the JSON lines after the rag-logger's group commit: wait until stable.
    events: list[dict[str, Any]] = []
    end = time.monotonic() + settle_s
    while time.monotonic() < end:
        events = read_events(lab.artifacts_dir, set(sources), started_ns)
        if events and all(any(e["src_ip"] == s for e in events) for s in sources):
            break
        time.sleep(0.1)
    for res in results:
        res.first_packet_ns = first.first.get(res.src, 0)
        res.blocked_ns = block.seen.get(res.src, 0)
        res.blocked = res.blocked_ns > 0
        if res.blocked and res.first_packet_ns:
            res.latency_ms = round((res.blocked_ns - res.first_packet_ns) / 1e6, 3)
        _summarise(res, events)
    return results


def _run_attacks(plan: list[Attack], res: AttackerResult) -> None:
    for a in plan:
        try:
            proc = subprocess.run(
                live.in_ns(live.NS_ATTACKER, *a.argv), capture_output=True, timeout=a.timeout_s, check=False
            )
            res.tool_exit.append(proc.returncode)
        except subprocess.TimeoutExpired:
            res.tool_exit.append(-9)  # killed at its bound; still a valid run


def format_result(r: AttackerResult) -> list[str]:
    lat = f"{r.latency_ms:.1f} ms" if r.latency_ms is not None else "-"
    detected = (
        f"{r.events} kept events, decisions {r.decisions}, types {r.attack_types}, "
        f"fast rules {r.rules or '{}'}, max final score {r.max_final_score:.2f}"
        if r.detected
        else "nothing"
    )
    return [
        f"{r.scenario}: attacker {r.src} ({', '.join(r.tools)}; exit {r.tool_exit})",
        f"  detected  {detected}",
        f"  blocked   {'yes: ' + r.src + ' in inet ' + live.TABLE + ' ban_v4 (mld-victim)' if r.blocked else 'NO'}",
        f"  latency   {lat}  (first attack packet -> nftables element present)",
        f"  stages    {r.stages_ms or '-'}  (ms from the first packet, first DROP event)",
    ]


@click.command()
@click.argument("scenario", type=click.Choice(sorted(SCENARIOS)))
@click.option("--lab-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--block-timeout", "block_timeout_s", type=float, default=20.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Only the JSON line.")
def attack(scenario: str, lab_dir: Path | None, block_timeout_s: float, as_json: bool) -> None:
    """Run a bounded attack from mld-attacker against the victim (live lab only) and report what
    was detected, what was blocked and the latency from first packet to kernel block.

    The last line is JSON: {"scenario", "attackers": [...], "all_blocked"}."""
    from libs.lab.cli import lab_from_options

    lab = lab_from_options(lab_dir, "default")
    try:
        results = run_scenario(lab, scenario, block_timeout_s)
    except live.LiveError as err:
        click.echo(f"mld-lab: error: {err}", err=True)
        sys.exit(1)
    if not as_json:
        for r in results:
            for line in format_result(r):
                click.echo(line)
    doc = {
        "scenario": scenario,
        "attackers": [asdict(r) | {"detected": r.detected} for r in results],
        "all_blocked": all(r.blocked for r in results),
    }
    click.echo(json.dumps(doc))
    sys.exit(0 if doc["all_blocked"] else 3)


# ------------------------------------------------------------------------------------ ssh-guess


def ssh_guess(src: str, attempts: int, tasks: int = 4, gap_s: float = 0.0, max_s: float = 50) -> int:
    """Password guessing against the victim's SSH-like server: one TCP session per guess
    (banner, key exchange, three password tries, close), `tasks` in parallel; bounded. Gives up
    after 3 failures in a row (blocked), as a real guesser whose packets go unanswered would."""
    end = time.monotonic() + max_s
    done = [0, 0, 0]  # sessions that ran, sessions that failed, failures in a row
    lock = threading.Lock()
    todo = list(range(attempts))

    def worker() -> None:
        while time.monotonic() < end:
            with lock:
                if not todo or done[2] >= 3:
                    return
                todo.pop()
            try:
                with socket.socket() as c:
                    c.settimeout(1.0)
                    c.bind((src, 0))
                    c.connect((VICTIM, live.SSH_PORT))
                    c.recv(256)
                    c.sendall(b"SSH-2.0-libssh2_1.10.0\r\n")
                    c.sendall(bytes(1100))
                    c.recv(4096)
                    c.sendall(bytes(140))
                    c.recv(4096)
                    for size in (84, 100, 116):
                        c.sendall(bytes(size))
                        c.recv(4096)
                with lock:
                    done[0] += 1
                    done[2] = 0
            except OSError:
                with lock:
                    done[1] += 1
                    done[2] += 1
            time.sleep(gap_s)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(tasks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_s + 5)
    print(json.dumps({"sessions": done[0], "failed": done[1]}))
    return 0


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m libs.lab.attacks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("ssh-guess")
    g.add_argument("--src", required=True)
    g.add_argument("--attempts", type=int, default=40)
    g.add_argument("--tasks", type=int, default=4, help="sessions in parallel (hydra -t)")
    g.add_argument("--gap-s", type=float, default=0.0, help="pause after each guess, per task")
    a = ap.parse_args(argv)
    if not (1 <= a.tasks <= 16 and 0 <= a.gap_s <= 5 and 1 <= a.attempts <= 500):
        ap.error("bounds: --tasks 1-16, --gap-s 0-5, --attempts 1-500 (the lab's attacks stay bounded)")
    return ssh_guess(a.src, a.attempts, a.tasks, a.gap_s)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(_main())
