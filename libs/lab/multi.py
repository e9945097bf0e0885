"""The multi-node lab: a three-member etcd cluster, detector workers, and (with root) three "nodes" as
network namespaces, each with a sniffer and a firewall agent, sharing two detector workers, one
rag-logger and rag.

Parts are plain processes (etcd, mld-*) started here with their own logs; `MultiLab.down()` stops
every process it started (by pid), deletes every namespace and veth it made and removes nothing
else. Addresses come from 198.18.0.0/15: node i is 198.18.<i>.2 in namespace `mld-<i>` behind a
veth whose host side is 198.18.<i>.1; the host runs the shared parts (detectors, rag-logger, rag)
and etcd members listen on each node's address (the etcd of node i runs in namespace i).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from libs.common import curve
from libs.common.errors import ConfigError, MLDefenderError
from libs.common.workq import WorkSender
from libs.common.zmqio import SocketSettings
from ml_defender.v1 import config_pb2, detection_pb2, flow_pb2

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


class LabError(MLDefenderError):
    """A lab part that would not start or stop."""


def wait_until(cond: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `cond` until truthy; LabError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout_s:.0f}s waiting for {what}", "lab", "see the logs")
        time.sleep(interval_s)


@dataclass
class Proc:
    """One child process, started in its own session (and optionally in a network namespace)."""

    name: str
    argv: list[str]
    log_path: Path
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        if self.running():
            return self
        argv = (["ip", "netns", "exec", self.netns] if self.netns else []) + self.argv
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=log,
                cwd=self.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (drain and flush), SIGKILL after `timeout_s`; the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode


# -- etcd cluster ---------------------------------------------------------------------------
@dataclass
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    netns: str | None = None
    proc: Proc | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def healthy(self) -> bool:
        """True when this member answers /health with a leader (quorum) behind it."""
        if self.netns:
            out = subprocess.run(
                ["ip", "netns", "exec", self.netns, "curl", "-s", "-m", "1", self.client_url + "/health"],
                capture_output=True,
                check=False,
            )
            return b'"true"' in out.stdout
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False


class EtcdCluster:
    """A static three-member (or n-member) etcd cluster; members can be killed and rejoin."""

    def __init__(self, members: Sequence[EtcdMember], log_dir: Path, token: str = "mld-multi") -> None:
        self.members = list(members)
        self.log_dir = log_dir
        self.token = token
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def _argv(self, m: EtcdMember) -> list[str]:
        state = "existing" if (m.data_dir / "member").exists() else "new"
        return [
            ETCD_BIN,
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            m.client_url,
            "--advertise-client-urls",
            m.client_url,
            "--listen-peer-urls",
            m.peer_url,
            "--initial-advertise-peer-urls",
            m.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            state,
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]

    def start_member(self, i: int) -> None:
        m = self.members[i]
        if m.proc is None:
            m.proc = Proc(f"etcd-{m.name}", self._argv(m), self.log_dir / f"etcd-{m.name}.log", m.netns)
        else:
            m.proc.argv = self._argv(m)
        m.proc.start()

    def start(self, timeout_s: float = 30.0) -> None:
        """Start every member (they wait for each other), then wait for all to be healthy."""
        for i in range(len(self.members)):
            self.start_member(i)
        for i in range(len(self.members)):
            self.wait_healthy(i, timeout_s)

    def wait_healthy(self, i: int, timeout_s: float = 30.0) -> None:
        m = self.members[i]

        def ok() -> bool:
            if m.proc is not None and m.proc.popen is not None and m.proc.popen.poll() is not None:
                raise LabError(f"etcd member {m.name} exited", str(m.proc.log_path), "read its log")
            return m.healthy()

        wait_until(ok, timeout_s, f"etcd member {m.name} healthy")

    def kill_member(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None:
            m.proc.kill()

    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None:
                m.proc.stop()


# Acknowledged sensor -> detector delivery (libs/common/workq.py) in the multi-node lab: a killed
# worker's batches go to the others. Short timeouts: a lab worker is declared dead within ~2 s.
LAB_RELIABLE: dict[str, int] = {"window": 4, "heartbeat_ms": 250, "peer_timeout_ms": 2000, "ack_delay_ms": 20}


# -- detector workers -----------------------------------------------------------------------
def detector_doc(
    node_id: str,
    input_ep: str,
    rag_ep: str,
    firewall_ep: str | None = None,
    firewall_nodes: dict[str, str] | None = None,
    drop_fanout: str = "all",
    metrics_port: int = 0,
    extra: dict[str, Any] | None = None,
    reliable: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A DetectorSettings document for one worker (blocking sends: nothing dropped in a lab);
    `reliable` (e.g. LAB_RELIABLE) makes the input acknowledged (the sensor must use it too)."""
    out = {"endpoint": "", "send_timeout_ms": -1, "linger_ms": 2000}
    doc: dict[str, Any] = {
        "node_id": node_id,
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "input": {"endpoint": input_ep, "hwm": 8},  # little in flight per worker: less lost in a crash
        "rag_logger": {**out, "endpoint": rag_ep},
        "drop_fanout": drop_fanout,
    }
    if reliable is not None:
        doc["input"]["reliable"] = dict(reliable)
    if firewall_ep:
        doc["firewall"] = {**out, "endpoint": firewall_ep}
    if firewall_nodes:
        doc["firewall_nodes"] = {n: {**out, "endpoint": ep} for n, ep in firewall_nodes.items()}
    doc.update(extra or {})
    return doc


def detector_proc(name: str, doc: dict[str, Any], run_dir: Path, netns: str | None = None) -> Proc:
    """A `mld-detector run --config <run_dir>/<name>.json` process (not started)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / f"{name}.json"
    cfg.write_text(json.dumps(doc, indent=2))
    return Proc(
        name, [str(BIN / "mld-detector"), "run", "--config", str(cfg)], run_dir / f"{name}.log", netns
    )


def rag_logger_proc(name: str, input_ep: str, artifacts: Path, run_dir: Path) -> Proc:
    """A `mld-rag-logger run` that keeps every event (keep_all) without fsync: the lab's witness
    of what reached the durable store, one artifact pair per event id."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / f"{name}.json"
    doc = {
        "node_id": name,
        "metrics": {"host": "127.0.0.1", "port": 0},
        "input": {"endpoint": input_ep, "bind": True},
        "artifacts_root": str(artifacts),
        "keep": {"keep_all": True},
        "commit": {"fsync": False},
    }
    cfg.write_text(json.dumps(doc, indent=2))
    return Proc(name, [str(BIN / "mld-rag-logger"), "run", "--config", str(cfg)], run_dir / f"{name}.log")


def check_root() -> None:
    if os.geteuid() != 0:
        raise ConfigError(
            "the multi-node lab needs root (network namespaces)", "run-lab-multi", "run it as root"
        )


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {out.stderr.strip()}", "lab", "see the message")
    return out


def sigterm_all(procs: Sequence[Proc]) -> None:
    """Ask every process to stop at once, then wait for each (faster than one by one)."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.signal(signal.SIGTERM)
    for p in procs:
        p.stop()


# -- firewall agents ------------------------------------------------------------------------
def firewall_doc(
    node_id: str, input_ep: str, run_dir: Path, backend: str = "dry_run", table: str = "ml_defender"
) -> dict[str, Any]:
    """A FirewallSettings document for one node's agent (dry_run journals under run_dir)."""
    return {
        "node_id": node_id,
        "metrics": {"host": "127.0.0.1", "port": 0},
        "input": {"endpoint": input_ep, "bind": True},
        "backend": backend,
        "table": table,
        "dry_run_journal": str(run_dir / f"firewall-{node_id}.jsonl"),
        "batch_interval_ms": 2.0,
    }


def firewall_proc(
    name: str,
    doc: dict[str, Any],
    run_dir: Path,
    etcd_url: str | None = None,
    events_ep: str = "",
    netns: str | None = None,
) -> Proc:
    """A `mld-firewall run` process (not started); with `etcd_url` it follows config/firewall live."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / f"{name}.json"
    cfg.write_text(json.dumps(doc, indent=2))
    argv = [str(BIN / "mld-firewall"), "run", "--config", str(cfg)]
    if etcd_url:
        argv += [
            "--etcd",
            etcd_url,
            "--config-cache",
            str(run_dir / "config-cache"),
            "--config-events",
            events_ep,
        ]
    return Proc(name, argv, run_dir / f"{name}.log", netns)


# -- traffic and evidence -------------------------------------------------------------------
def make_batch(
    seq: int, flows: int, origin: str, attacker: str | None = None, first_id: int = 1
) -> flow_pb2.FlowBatch:
    """A FlowBatch of `flows` flows seen at node `origin`, flow ids first_id.. (unique per test).

    With `attacker`, every flow comes from that address and the fast detector scored it 0.95
    (a DROP whatever the models say); otherwise sources are 198.18.200.x with no fast score.
    """
    b = flow_pb2.FlowBatch(node_id=origin, sequence=seq, sent_ns=time.time_ns())
    for j in range(flows):
        fid = first_id + j
        r = b.flows.add(flow_id=fid, node_id=origin, interface="veth0")
        src = attacker or f"198.18.200.{fid % 250 + 1}"
        r.key.src_addr = ipaddress.ip_address(src).packed
        r.key.dst_addr = ipaddress.ip_address("198.18.250.1").packed
        r.key.src_port, r.key.dst_port, r.key.protocol = 30000 + fid % 30000, 22, 6
        r.first_seen_ns = r.last_seen_ns = r.captured_ns = time.time_ns()
        b.fast.add(score=0.95 if attacker else 0.0, rules=["lab_attack"] if attacker else [])
    return b


class EventSink:
    """A PULL socket (the rag-logger's place) that records every DetectionEvent and ConfigChange."""

    def __init__(self, endpoint: str, ctx: zmq.Context[Any]) -> None:
        self.sock = ctx.socket(zmq.PULL)
        self.sock.rcvhwm = 1_000_000
        self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.flow_ids: collections.Counter[int] = collections.Counter()
        self.by_worker: collections.Counter[str] = collections.Counter()
        self.changes: list[config_pb2.ConfigChange] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            while True:
                try:
                    kind, body = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                with self._lock:
                    if kind == b"ml_defender.v1.DetectionEvent":
                        ev = detection_pb2.DetectionEvent.FromString(body)
                        self.flow_ids[ev.flow.flow_id] += 1
                        self.by_worker[ev.node_id] += 1
                    elif kind == b"ml_defender.v1.ConfigChange":
                        self.changes.append(config_pb2.ConfigChange.FromString(body))
        self.sock.close(0)

    def count(self) -> int:
        with self._lock:
            return sum(self.flow_ids.values())

    def snapshot(self) -> tuple[collections.Counter[int], collections.Counter[str]]:
        with self._lock:
            return collections.Counter(self.flow_ids), collections.Counter(self.by_worker)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class FlowSource:
    """The sniffer's side of the detector input: a bound PUSH that knows how many workers joined,
    or with `reliable` the sniffer's own acknowledged sender (libs.common.workq.WorkSender)."""

    def __init__(
        self, endpoint: str, ctx: zmq.Context[Any], hwm: int = 8, reliable: dict[str, Any] | None = None
    ) -> None:
        self.endpoint = endpoint
        self.sender: WorkSender | None = None
        if reliable is not None:
            settings = SocketSettings.model_validate(
                {
                    "endpoint": endpoint,
                    "bind": True,
                    "hwm": 100_000,
                    "send_timeout_ms": -1,
                    "reliable": reliable,
                }
            )
            self.sender = WorkSender("lab_source", settings, ctx)
            return
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.sndhwm = hwm  # small: a busy or dead worker's share goes to the others
        self.mon = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.peers = 0

    def _events(self, timeout_ms: int) -> None:
        while self.mon.poll(timeout_ms):
            ev = recv_monitor_message(self.mon)
            self.peers += 1 if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED else -1
            timeout_ms = 0

    def wait_peers(self, n: int, timeout_s: float, procs: Sequence[Proc] = ()) -> None:
        """Wait until `n` workers are connected (they connect after loading their models)."""

        def ok() -> bool:
            if self.sender is None:
                self._events(50)
            else:
                time.sleep(0.05)
            for p in procs:
                if p.popen is not None and p.popen.poll() is not None:
                    raise LabError(
                        f"{p.name} exited with {p.popen.returncode}", str(p.log_path), "read its log"
                    )
            return (self.sender.workers() if self.sender else self.peers) >= n

        wait_until(ok, timeout_s, f"{n} detector workers connected", interval_s=0.0)

    def send(self, batch: flow_pb2.FlowBatch) -> None:
        if self.sender is not None:
            self.sender.send(batch)
            return
        self.sock.send_multipart([b"ml_defender.v1.FlowBatch", batch.SerializeToString()])

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
            return
        self.sock.disable_monitor()
        self.mon.close(0)
        self.sock.close(0)


# -- the namespace lab ----------------------------------------------------------------------
@dataclass(frozen=True)
class MultiPlan:
    """Names and addresses of one multi-node lab (all inside namespaces: the host is untouched).

    One L2 segment 198.18.0.0/24 on a bridge in the `core` namespace (which runs the shared
    parts at .1); node i at .11+i, the attacker at .66.
    """

    lab_dir: Path
    prefix: str = "mldmn"
    nodes: tuple[str, ...] = ("a", "b", "c")
    detectors: int = 2
    with_rag: bool = True
    drop_fanout: str = "all"
    table: str = "ml_defender"
    subnet: str = "198.18.0"
    curve: bool = True  # CURVE on the links between namespaces that carry flows and events
    reliable: bool = True  # acknowledged sniffer -> detector delivery (libs/common/workq.py)

    @property
    def core_ns(self) -> str:
        return f"{self.prefix}-core"

    @property
    def attacker_ns(self) -> str:
        return f"{self.prefix}-atk"

    @property
    def core_addr(self) -> str:
        return f"{self.subnet}.1"

    @property
    def attacker_addr(self) -> str:
        return f"{self.subnet}.66"

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def addr(self, node: str) -> str:
        return f"{self.subnet}.{11 + self.nodes.index(node)}"

    def etcd_url(self, node: str) -> str:
        return f"http://{self.addr(node)}:2379"


def _ns_exec(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@functools.cache
def supports_etcd(script: str) -> bool:
    """Whether `<script> run` takes --etcd yet (services are being wired to etcd one by one)."""
    out = subprocess.run([str(BIN / script), "run", "--help"], capture_output=True, text=True, check=False)
    return "--etcd" in out.stdout


class MultiLab:
    """Build, run and tear down the multi-node lab described by a MultiPlan."""

    def __init__(self, plan: MultiPlan) -> None:
        self.plan = plan
        self.procs: list[Proc] = []
        self.run_dir = plan.lab_dir / "run"
        members = [
            EtcdMember(n, plan.addr(n), 2379, 2380, plan.lab_dir / f"etcd-{n}", plan.ns(n))
            for n in plan.nodes
        ]
        self.cluster = EtcdCluster(members, plan.lab_dir / "run", token=f"{plan.prefix}-etcd")

    # network ---------------------------------------------------------------------------------
    def namespaces(self) -> list[str]:
        p = self.plan
        return [p.core_ns, *(p.ns(n) for n in p.nodes), p.attacker_ns]

    def net_up(self) -> None:
        check_root()
        p = self.plan
        existing = run(["ip", "netns", "list"]).stdout
        for ns in self.namespaces():
            if ns in existing.split():
                raise ConfigError(
                    f"namespace {ns} already exists", "run-lab-multi", "run `make kill-lab-multi`"
                )
        for ns in self.namespaces():
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        core = p.core_ns
        run(["ip", "-n", core, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", core, "addr", "add", f"{p.core_addr}/24", "dev", "br0"])
        run(["ip", "-n", core, "link", "set", "br0", "up"])
        legs = [(n, p.ns(n), p.addr(n)) for n in p.nodes] + [("atk", p.attacker_ns, p.attacker_addr)]
        for name, ns, addr in legs:
            port = f"p-{name}"
            run(
                [
                    "ip",
                    "link",
                    "add",
                    port,
                    "netns",
                    core,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                ]
            )
            run(["ip", "-n", core, "link", "set", port, "master", "br0", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def net_down(self) -> None:
        existing = run(["ip", "netns", "list"], check=False).stdout.split()
        for ns in self.namespaces():
            if ns in existing:
                run(["ip", "netns", "del", ns], check=False)  # its veths and nftables tables go with it

    # services --------------------------------------------------------------------------------
    def _write(self, name: str, doc: dict[str, Any]) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2))
        return path

    def _svc(self, name: str, script: str, doc: dict[str, Any], ns: str, etcd_url: str | None) -> Proc:
        argv = [str(BIN / script), "run", "--config", str(self._write(name, doc))]
        if etcd_url and supports_etcd(script):
            argv += [
                "--etcd",
                etcd_url,
                "--config-cache",
                str(self.plan.lab_dir / "config-cache"),
                "--config-events",
                f"tcp://{self.plan.core_addr}:5573",
            ]
        proc = Proc(name, _ns_exec(ns, *argv), self.run_dir / f"{name}.log")
        self.procs.append(proc)
        return proc.start()

    def keys(self) -> dict[str, dict[str, Any]]:
        """CURVE settings per socket role: sniffers and firewalls are servers, detectors clients.

        One key pair per role keeps the lab short (every sniffer serves with the `sensor` key, so a
        detector's single input socket can connect to all of them); each server accepts only the
        detectors' public key. A real deployment makes one pair per host with `mld-keys`.
        """
        d = self.plan.lab_dir / "keys"
        for role in ("sensor", "firewall", "detector"):
            if not (d / f"{role}.key_secret").exists():
                curve.generate(d, role, force=True)
        allowed = d / "authorized"
        allowed.mkdir(exist_ok=True)
        shutil.copyfile(d / "detector.key", allowed / "detector.key")
        return {
            "sensor": {"secret_key_file": str(d / "sensor.key_secret"), "authorized_keys_dir": str(allowed)},
            "firewall": {
                "secret_key_file": str(d / "firewall.key_secret"),
                "authorized_keys_dir": str(allowed),
            },
            "to_sensor": {
                "secret_key_file": str(d / "detector.key_secret"),
                "server_key_file": str(d / "sensor.key"),
            },
            "to_firewall": {
                "secret_key_file": str(d / "detector.key_secret"),
                "server_key_file": str(d / "firewall.key"),
            },
        }

    def services_up(self, timeout_s: float = 120.0) -> None:
        p = self.plan
        core = p.core_ns
        k: dict[str, dict[str, Any] | None] = dict(self.keys()) if p.curve else {}
        self.cluster.start(timeout_s=60)
        t = "tcp://"
        self._svc(
            "rag-logger",
            "mld-rag-logger",
            {
                "node_id": "core",
                "metrics": {"host": p.core_addr, "port": 9103},
                "input": {"endpoint": f"{t}{p.core_addr}:5573", "bind": True},
                "artifacts_root": str(p.lab_dir / "artifacts"),
            },
            core,
            p.etcd_url(p.nodes[0]),
        )
        for n in p.nodes:
            a = p.addr(n)
            self._svc(
                f"firewall-{n}",
                "mld-firewall",
                {
                    "node_id": n,
                    "metrics": {"host": a, "port": 9105},
                    "input": {"endpoint": f"{t}{a}:5572", "bind": True, "curve": k.get("firewall")},
                    "backend": "nftables",
                    "table": p.table,
                    "batch_interval_ms": 2.0,
                    # etcd members and pipeline peers are never blocked, whatever a model says
                    "allow": {"peers": [p.core_addr, *(p.addr(m) for m in p.nodes)]},
                },
                p.ns(n),
                p.etcd_url(n),
            )
            self._svc(
                f"sniffer-{n}",
                "mld-sniffer",
                {
                    "node_id": n,
                    "metrics": {"host": a, "port": 9101},
                    "capture": {"source": "afpacket", "interface": "eth0"},
                    # the node's own replies are not captured (outgoing is ignored): a scan's
                    # unanswered-looking attempts end by idle time, so the lab keeps that short
                    "flows": {
                        "idle_timeout_s": 1.0,
                        "tcp_close_linger_s": 0.03,
                        "export_interval_ms": 10,
                        "export_batch_size": 256,
                    },
                    "output": {
                        "endpoint": f"{t}{a}:5571",
                        "bind": True,
                        "curve": k.get("sensor"),
                        "reliable": LAB_RELIABLE if p.reliable else None,
                        # reliable: batches kept until acknowledged, ~90 KB each at 256 flows
                        "hwm": 1000,
                    },
                },
                p.ns(n),
                p.etcd_url(n),
            )
        sniffers = [f"{t}{p.addr(n)}:5571" for n in p.nodes]
        for i in range(1, p.detectors + 1):
            doc = detector_doc(
                f"det-{i}",
                sniffers[0],
                f"{t}{p.core_addr}:5573",
                firewall_nodes={n: f"{t}{p.addr(n)}:5572" for n in p.nodes},
                drop_fanout=p.drop_fanout,
                extra={"explain": {"max_per_batch": 2}, "batch": {"max_flows": 256}},
                reliable=LAB_RELIABLE if p.reliable else None,
            )
            doc["input"]["extra_endpoints"] = sniffers[1:]
            doc["input"]["curve"] = k.get("to_sensor")
            for fw in doc["firewall_nodes"].values():
                fw["curve"] = k.get("to_firewall")
            doc["metrics"] = {"host": p.core_addr, "port": 9101 + i * 10}
            self._svc(f"detector-{i}", "mld-detector", doc, core, p.etcd_url(p.nodes[i % len(p.nodes)]))
        if p.with_rag:
            self._svc(
                "rag",
                "mld-rag",
                {
                    "node_id": "core",
                    "metrics": {"host": p.core_addr, "port": 9104},
                    "ingest": {"artifacts_root": str(p.lab_dir / "artifacts")},
                    "index": {"dir": str(p.lab_dir / "rag-index")},
                    "query": {"endpoint": f"{t}{p.core_addr}:5574"},
                },
                core,
                p.etcd_url(p.nodes[0]),
            )
        self.save_state()

    def exited(self) -> list[str]:
        """Services that are no longer running (with their exit codes), for readiness checks."""
        return [
            f"{p.name} (exit {p.popen.returncode}, log {p.log_path})"
            for p in [*self.procs, *self._etcd_procs()]
            if p.popen is not None and p.popen.poll() is not None
        ]

    def save_state(self) -> None:
        state = {
            "namespaces": self.namespaces(),
            "pids": {p.name: p.popen.pid for p in [*self.procs, *self._etcd_procs()] if p.popen is not None},
        }
        (self.plan.lab_dir / "state.json").write_text(json.dumps(state, indent=2))

    def _etcd_procs(self) -> list[Proc]:
        return [m.proc for m in self.cluster.members if m.proc is not None]

    def up(self) -> None:
        self.plan.lab_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.net_up()
            self.services_up()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        sigterm_all(self.procs)
        self.cluster.stop()
        self.net_down()
        with contextlib.suppress(FileNotFoundError):
            (self.plan.lab_dir / "state.json").unlink()

    # checks ----------------------------------------------------------------------------------
    def blocked(self, node: str, addr: str) -> bool:
        """Whether `addr` is an element of the node's nftables sets (inside its namespace)."""
        out = run(
            _ns_exec(self.plan.ns(node), "nft", "-j", "list", "table", "inet", self.plan.table), check=False
        )
        return out.returncode == 0 and f'"{addr}"' in out.stdout

    def attack(self, node: str, ports: str = "1-200") -> subprocess.CompletedProcess[str]:
        """A SYN scan from the attacker namespace against `node` (closed ports answer RST)."""
        return run(
            _ns_exec(
                self.plan.attacker_ns,
                "nmap",
                "-n",
                "-Pn",
                "-sS",
                "-p",
                ports,
                "--max-retries",
                "0",
                "-T4",
                "--host-timeout",
                "20s",
                self.plan.addr(node),
            ),
            check=False,
        )

    def nodes_table(self) -> str:
        p = self.plan
        out = run(
            _ns_exec(p.ns(p.nodes[0]), str(BIN / "mld-config"), "--etcd", p.etcd_url(p.nodes[0]), "nodes"),
            check=False,
        )
        return out.stdout + out.stderr


def down_from_state(lab_dir: Path, prefix: str = "mldmn") -> None:
    """Tear down a lab started by another process: its recorded pids (checked), then its namespaces."""
    state_path = lab_dir / "state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        for name, pid in state.get("pids", {}).items():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"mld-" in cmdline or b"etcd" in cmdline:  # the pid is still ours, not a reused one
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    print(f"stopping {name} (pid {pid})")
        deadline = time.monotonic() + 15
        for pid in state.get("pids", {}).values():
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                if Path(f"/proc/{pid}").exists():
                    os.kill(pid, signal.SIGKILL)
        state_path.unlink()
    MultiLab(MultiPlan(lab_dir, prefix=prefix)).net_down()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m libs.lab.multi up|down|status|attack [--dir DIR]` (the run-lab-multi targets)."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="mld-lab-multi", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    ap.add_argument("command", choices=("up", "down", "status", "attack"))
    ap.add_argument("--dir", type=Path, default=REPO / "var" / "lab-multi", help="lab directory (logs, data)")
    ap.add_argument("--fanout", choices=("all", "origin"), default="all", help="detector drop_fanout")
    ap.add_argument("--no-rag", action="store_true", help="leave out the rag service (saves ~1 GB RAM)")
    ap.add_argument("--no-curve", action="store_true", help="plaintext ZeroMQ between namespaces")
    ap.add_argument(
        "--push", action="store_true", help="plain PUSH/PULL sniffer -> detectors (no acknowledgements)"
    )
    args = ap.parse_args(argv)
    plan = MultiPlan(
        args.dir.resolve(),
        drop_fanout=args.fanout,
        with_rag=not args.no_rag,
        curve=not args.no_curve,
        reliable=not args.push,
    )
    lab = MultiLab(plan)
    try:
        if args.command == "up":
            if (plan.lab_dir / "state.json").exists():
                raise ConfigError("a multi-node lab is already up", str(plan.lab_dir), "make kill-lab-multi")
            for d in ("run", "artifacts", "config-cache", *(f"etcd-{n}" for n in plan.nodes)):
                shutil.rmtree(plan.lab_dir / d, ignore_errors=True)
            lab.up()
            print(f"multi-node lab up in {plan.lab_dir} (logs in run/)")
            print(f"  nodes {', '.join(f'{n}={plan.addr(n)} (netns {plan.ns(n)})' for n in plan.nodes)}")
            print(
                f"  core {plan.core_addr} (netns {plan.core_ns}): {plan.detectors} detectors, rag-logger"
                + (", rag" if plan.with_rag else "")
            )
            print(f"  etcd cluster: {', '.join(lab.cluster.endpoints())}")
            print(f"  attacker {plan.attacker_addr} (netns {plan.attacker_ns}); try: make attack-lab-multi")
            print("  status: make status-lab-multi; stop: make kill-lab-multi")
        elif args.command == "down":
            down_from_state(plan.lab_dir, plan.prefix)
            print("multi-node lab down")
        elif args.command == "status":
            for n in plan.nodes:
                print(
                    f"etcd {n}: {'healthy' if lab.cluster.members[plan.nodes.index(n)].healthy() else 'DOWN'}"
                )
            print(lab.nodes_table())
        else:
            out = lab.attack(plan.nodes[0])
            print(out.stdout[-800:])
            ok = wait_until(
                lambda: all(lab.blocked(n, plan.attacker_addr) for n in plan.nodes) or None, 10, "blocks"
            )
            print(f"{plan.attacker_addr} blocked at {', '.join(plan.nodes)}: {bool(ok)}")
    except MLDefenderError as err:
        print(f"mld-lab-multi: error: {err.message}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
