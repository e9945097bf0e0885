"""The lab plan: which programs run, on which ports, with which settings — pure, no processes.

`mld-lab up` turns a LabSettings into per-service JSON settings files and a supervisord
configuration; everything here is plain data so it is tested without starting anything.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parents[2]
SHARED_PCAPS = REPO.parent / "shared" / "data" / "pcaps"
SERVICES = ("sniffer", "ml-detector", "rag-logger", "rag", "firewall")
SCRIPTS = {
    "sniffer": "mld-sniffer",
    "ml-detector": "mld-detector",
    "rag-logger": "mld-rag-logger",
    "rag": "mld-rag",
    "firewall": "mld-firewall",
}


class LabPorts(BaseModel, extra="forbid"):
    """Every port the lab uses, on 127.0.0.1."""

    etcd_client: int = 2379
    etcd_peer: int = 2380
    flows: int = 5571  # sniffer PUSH binds
    firewall: int = 5572  # firewall PULL binds
    rag_logger: int = 5573  # rag-logger PULL binds
    rag_query: int = 5574  # rag REP binds
    metrics_sniffer: int = 9101
    metrics_ml_detector: int = 9102
    metrics_rag_logger: int = 9103
    metrics_rag: int = 9104
    metrics_firewall: int = 9105
    prometheus: int = 9190

    def metrics(self, service: str) -> int:
        return int(getattr(self, "metrics_" + service.replace("-", "_")))


class LabSettings(BaseModel, extra="forbid"):
    """Where the lab keeps its state and what it feeds the sniffer."""

    mode: Literal["replay", "live"] = "replay"
    lab_dir: Path = REPO / "var" / "lab"
    artifacts_dir: Path = REPO / "logs" / "rag" / "artifacts"
    pcaps: list[Path] = Field(default_factory=list)
    pace: Literal["fast", "realtime"] = "realtime"
    loop: bool = True
    ports: LabPorts = Field(default_factory=LabPorts)
    firewall_backend: Literal["dry_run", "nftables", "ipset"] = "dry_run"
    prometheus: bool = True
    venv_bin: Path = Path(sys.executable).parent

    @property
    def supervisor_sock(self) -> Path:
        return self.lab_dir / "supervisor.sock"

    @property
    def supervisor_conf(self) -> Path:
        return self.lab_dir / "supervisord.conf"

    @property
    def log_dir(self) -> Path:
        return self.lab_dir / "logs"

    @property
    def config_dir(self) -> Path:
        return self.lab_dir / "config"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.etcd_client}"

    @property
    def dry_run_log(self) -> Path:
        return self.lab_dir / "firewall-dry-run.jsonl"


def default_pcaps() -> list[Path]:
    """The public captures beside the project when present (read in place, never copied)."""
    if SHARED_PCAPS.is_dir():
        found = sorted(p for p in SHARED_PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
        if found:
            return found
    return []


def free_ports() -> LabPorts:
    """A LabPorts with every port chosen free on 127.0.0.1 (tests, parallel labs)."""
    socks = []
    values: dict[str, int] = {}
    try:
        for name in LabPorts.model_fields:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            values[name] = int(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return LabPorts(**values)


def service_overrides(lab: LabSettings) -> dict[str, dict[str, Any]]:
    """The settings each service gets in the lab, on top of its own defaults."""
    p = lab.ports
    t = "tcp://127.0.0.1:"
    metrics = {s: {"host": "127.0.0.1", "port": p.metrics(s)} for s in SERVICES}
    return {
        "sniffer": {
            "metrics": metrics["sniffer"],
            "capture": {
                "source": "pcap",
                "pcap_paths": [str(x) for x in lab.pcaps],
                "pace": lab.pace,
                "loop": lab.loop,
                # Replayed packets are shifted to "now" so events, queries and latencies are current.
                "rebase_time": True,
            },
            "output": {"endpoint": f"{t}{p.flows}", "bind": True},
        },
        "ml-detector": {
            "metrics": metrics["ml-detector"],
            "models_dir": str(REPO / "models"),
            "engine_cache_dir": str(lab.lab_dir / "cache" / "ml_detector"),
            "input": {"endpoint": f"{t}{p.flows}", "bind": False},
            "firewall": {"endpoint": f"{t}{p.firewall}", "bind": False},
            "rag_logger": {"endpoint": f"{t}{p.rag_logger}", "bind": False},
        },
        "rag-logger": {
            "metrics": metrics["rag-logger"],
            "input": {"endpoint": f"{t}{p.rag_logger}", "bind": True},
            "artifacts_root": str(lab.artifacts_dir),
        },
        "rag": {
            "metrics": metrics["rag"],
            "index": {"dir": str(lab.lab_dir / "rag-index")},
            "ingest": {"artifacts_root": str(lab.artifacts_dir)},
            "query": {"endpoint": f"{t}{p.rag_query}"},
            "tuning": {"etcd_endpoint": lab.etcd_url},
        },
        "firewall": {
            "metrics": metrics["firewall"],
            "input": {"endpoint": f"{t}{p.firewall}", "bind": True},
            "backend": lab.firewall_backend,
            "dry_run_journal": str(lab.dry_run_log),
        },
    }


@dataclass
class Program:
    """One supervisord program."""

    name: str
    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    priority: int = 100
    stopwaitsecs: int = 30


def etcd_program(lab: LabSettings) -> Program:
    p = lab.ports
    url = lab.etcd_url
    peer = f"http://127.0.0.1:{p.etcd_peer}"
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    return Program(
        "etcd",
        [
            binary,
            "--name=lab",
            f"--data-dir={lab.lab_dir / 'etcd'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=lab={peer}",
            "--log-level=warn",
            "--logger=zap",
        ],
        environment={"ETCD_UNSUPPORTED_ARCH": "arm64"} if _is_arm64() else {},
        priority=10,
    )


def _is_arm64() -> bool:
    import platform

    return platform.machine() in ("aarch64", "arm64")


def etcd_args(lab: LabSettings) -> list[str]:
    """Every service follows config/<service> in the lab's etcd and reports ConfigChanges."""
    return [
        "--etcd",
        lab.etcd_url,
        "--config-cache",
        str(lab.lab_dir / "config-cache"),
        "--config-events",
        f"tcp://127.0.0.1:{lab.ports.rag_logger}",
    ]


def etcd_documents(lab: LabSettings, deploy_dir: Path) -> dict[str, dict[str, Any]]:
    """The shared config/<service> documents the lab stores when absent.

    They are deploy/config/<service>.json (hot fields) with the lab's own values for any field the
    lab also sets (e.g. rag's etcd endpoint), since etcd's document wins over the --config file.
    """
    overrides = service_overrides(lab)
    docs = {}
    for svc in SERVICES:
        path = deploy_dir / f"{svc}.json"
        if path.exists():
            docs[svc] = _overlay_present(json.loads(path.read_text()), overrides[svc])
    return docs


def _overlay_present(doc: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`doc` with the leaves of `over` that `doc` already has (no new keys are added)."""
    out = dict(doc)
    for key, value in over.items():
        if key not in out:
            continue
        if isinstance(value, Mapping) and isinstance(out[key], dict):
            out[key] = _overlay_present(out[key], value)
        else:
            out[key] = value
    return out


def service_programs(lab: LabSettings) -> list[Program]:
    progs = []
    for i, svc in enumerate(SERVICES):
        cmd = [
            str(lab.venv_bin / SCRIPTS[svc]),
            "run",
            "--config",
            str(lab.config_dir / f"{svc}.json"),
            *etcd_args(lab),
        ]
        # Receivers first so that senders find them (ZeroMQ reconnects anyway).
        order = {"rag-logger": 20, "firewall": 21, "rag": 22, "ml-detector": 30, "sniffer": 40}[svc]
        progs.append(Program(svc, cmd, environment={"PYTHONUNBUFFERED": "1"}, priority=order + i * 0))
    return progs


def render_supervisord(lab: LabSettings, programs: list[Program]) -> str:
    """A complete supervisord.conf for the lab; supervisord itself daemonizes."""
    logs = lab.log_dir
    lines = [
        "; generated by mld-lab; edits are overwritten at the next `make run-lab`",
        "[unix_http_server]",
        f"file={lab.supervisor_sock}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={logs / 'supervisord.log'}",
        f"pidfile={lab.lab_dir / 'supervisord.pid'}",
        f"directory={REPO}",
        "childlogdir=" + str(logs),
        "nodaemon=false",
        "minfds=4096",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{lab.supervisor_sock}",
        "",
    ]
    for prog in programs:
        env = ",".join(f'{k}="{v}"' for k, v in sorted(prog.environment.items()))
        lines += [
            f"[program:{prog.name}]",
            "command=" + " ".join(_quote(a) for a in prog.command),
            f"directory={REPO}",
            f"priority={prog.priority}",
            "autostart=true",
            "autorestart=true",
            "startsecs=2",
            "startretries=5",
            "stopsignal=TERM",
            f"stopwaitsecs={prog.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={logs / (prog.name + '.log')}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=3",
        ]
        if env:
            lines.append(f"environment={env}")
        lines.append("")
    return "\n".join(lines)


def _quote(arg: str) -> str:
    if any(c in arg for c in " \"'%;"):
        return '"' + arg.replace("%", "%%").replace('"', '\\"') + '"'
    return arg
