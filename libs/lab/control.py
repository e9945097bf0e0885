"""Starting, inspecting and stopping the lab through supervisord's XML-RPC interface.

Status comes from supervisord (the process manager that really owns the processes) and from each
service's /metrics endpoint, never from matching process names.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from libs.lab.plan import LabSettings


class LabError(Exception):
    """A lab operation that failed; the message says what to do."""


def rpc(lab: LabSettings) -> Any:
    transport = SupervisorTransport(None, None, f"unix://{lab.supervisor_sock}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def supervisord_pid(lab: LabSettings) -> int | None:
    """The pid of this lab's supervisord when it is alive and answering, else None."""
    pidfile = lab.lab_dir / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        state = rpc(lab).supervisor.getState()
    except (OSError, xmlrpc.client.Fault):
        return None
    return pid if state.get("statename") in ("RUNNING", "RESTARTING") else None


@dataclass
class ProgramState:
    name: str
    state: str  # RUNNING, STOPPED, STARTING, BACKOFF, EXITED, FATAL, ...
    pid: int
    uptime_s: int
    description: str


def program_states(lab: LabSettings) -> list[ProgramState]:
    infos = rpc(lab).supervisor.getAllProcessInfo()
    out = []
    for info in infos:
        up = int(info["now"] - info["start"]) if info["statename"] == "RUNNING" else 0
        out.append(ProgramState(info["name"], info["statename"], int(info["pid"]), up, info["description"]))
    return out


def start_supervisord(lab: LabSettings, venv_bin: Path) -> int:
    """Start supervisord (it daemonizes) and wait for its socket to answer."""
    binary = venv_bin / "supervisord"
    proc = subprocess.run(
        [str(binary), "-c", str(lab.supervisor_conf)], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        raise LabError(f"supervisord did not start: {proc.stderr.strip() or proc.stdout.strip()}")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pid = supervisord_pid(lab)
        if pid:
            return pid
        time.sleep(0.1)
    raise LabError(
        f"supervisord did not answer on {lab.supervisor_sock}; see {lab.log_dir / 'supervisord.log'}"
    )


def wait_running(lab: LabSettings, names: list[str], timeout_s: float) -> list[ProgramState]:
    """Poll until every named program is RUNNING (past startsecs), or raise with their states."""
    deadline = time.monotonic() + timeout_s
    states: list[ProgramState] = []
    while time.monotonic() < deadline:
        states = program_states(lab)
        by = {s.name: s for s in states}
        if all(by.get(n) and by[n].state == "RUNNING" for n in names):
            return states
        if any(by.get(n) and by[n].state in ("FATAL",) for n in names):
            break
        time.sleep(0.2)
    bad = [f"{s.name}={s.state}" for s in states if s.name in names and s.state != "RUNNING"]
    raise LabError(
        f"not running after {timeout_s:.0f}s: {', '.join(bad)}; see `make logs-lab` or {lab.log_dir}/<name>.log"
    )


def metrics_up(port: int, timeout_s: float = 3.0) -> bool:
    """True when a service's /metrics answers with HTTP 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def shutdown(lab: LabSettings, timeout_s: float = 60) -> list[int]:
    """Stop every program and supervisord itself; return pids that had to be killed."""
    pid = supervisord_pid(lab)
    child_pids: list[int] = []
    if pid:
        with contextlib.suppress(OSError, xmlrpc.client.Fault):
            child_pids = [s.pid for s in program_states(lab) if s.pid]
        with contextlib.suppress(OSError, xmlrpc.client.Fault):
            rpc(lab).supervisor.shutdown()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    killed = []
    for cpid in child_pids:
        if pid_alive(cpid):
            with contextlib.suppress(OSError):
                os.killpg(cpid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(cpid, signal.SIGKILL)
            killed.append(cpid)
    for f in (lab.lab_dir / "supervisord.pid", lab.supervisor_sock):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    return killed


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has exited and does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def seed_etcd(lab: LabSettings, docs: dict[str, dict[str, Any]], timeout_s: float = 30) -> list[str]:
    """Store each config/<service> document that etcd does not have yet; existing ones are kept.

    Returns one line per service saying what happened, for the user.
    """
    from libs.etcd_client.client import EtcdClient
    from libs.etcd_client.edit import config_key, validate_document

    client = EtcdClient(lab.etcd_url)
    try:
        deadline = time.monotonic() + timeout_s
        while not client.health():
            if time.monotonic() > deadline:
                raise LabError(
                    f"etcd did not answer on {lab.etcd_url} within {timeout_s:.0f}s; see {lab.log_dir / 'etcd.log'}"
                )
            time.sleep(0.2)
        lines = []
        for svc, doc in docs.items():
            validate_document(client, svc, doc)
            key = config_key(svc)
            if client.get_kv(key) is not None:
                lines.append(f"{svc}: {client.full_key(key)} present, kept")
                continue
            rev = client.cas(key, doc, 0)
            lines.append(f"{svc}: {client.full_key(key)} loaded at revision {rev}")
        return lines
    finally:
        client.close()


def heartbeats(lab: LabSettings) -> dict[str, dict[str, Any]]:
    """service -> its latest heartbeat under nodes/<node>/<service> (empty when etcd is down)."""
    from libs.etcd_client.client import EtcdClient

    client = EtcdClient(lab.etcd_url, timeout_s=1.0)
    out: dict[str, dict[str, Any]] = {}
    try:
        for kv in client.get_prefix("nodes/"):
            hb = client.decode(kv)
            if isinstance(hb, dict):
                out[kv.key.rsplit("/", 1)[-1]] = hb
    except Exception:
        return {}
    finally:
        client.close()
    return out
