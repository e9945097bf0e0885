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

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.common.errors import ConfigError, MLDefenderError

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
            "50",
            "--election-timeout",
            "500",
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
) -> dict[str, Any]:
    """A DetectorSettings document for one worker (blocking sends: nothing dropped in a lab)."""
    out = {"endpoint": "", "send_timeout_ms": -1, "linger_ms": 2000}
    doc: dict[str, Any] = {
        "node_id": node_id,
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "input": {"endpoint": input_ep, "hwm": 64},
        "rag_logger": {**out, "endpoint": rag_ep},
        "drop_fanout": drop_fanout,
    }
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
