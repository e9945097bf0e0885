"""`mld-lab`: run the whole pipeline locally under supervisord (`make run-lab` and friends)."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from libs.common.errors import ConfigError, MLDefenderError
from libs.common.settings import ServiceSettings, validate_settings
from libs.lab import control
from libs.lab.plan import (
    REPO,
    SERVICES,
    LabSettings,
    default_pcaps,
    etcd_documents,
    etcd_program,
    free_ports,
    render_supervisord,
    service_overrides,
    service_programs,
)
from libs.watcher.diff import deep_merge

PACKAGES = {
    "sniffer": "sniffer",
    "ml-detector": "ml_detector",
    "rag-logger": "rag_logger",
    "rag": "rag",
    "firewall": "firewall",
}


def settings_model(service: str) -> type[BaseModel]:
    """The pydantic settings model a service defines in services/<pkg>/config.py."""
    module = importlib.import_module(f"services.{PACKAGES[service]}.config")
    explicit = getattr(module, "SETTINGS_MODEL", None)
    if explicit is not None:
        return explicit  # type: ignore[no-any-return]
    found = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, ServiceSettings)
        and obj is not ServiceSettings
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise ConfigError(f"cannot tell the settings model of {service}: found {[c.__name__ for c in found]}")
    return found[0]


def build_configs(
    lab: LabSettings, overrides: dict[str, dict[str, Any]] | None = None, what: str = "lab settings"
) -> dict[str, dict[str, Any]]:
    """Each service's defaults plus the lab's overrides (replay's by default), validated before
    anything starts."""
    overrides = service_overrides(lab) if overrides is None else overrides
    docs = {}
    for svc in SERVICES:
        model = settings_model(svc)
        doc = deep_merge(model().model_dump(mode="json"), overrides[svc])
        validate_settings(model, doc, f"{what} for {svc}")
        docs[svc] = doc
    return docs


def write_configs(lab: LabSettings, docs: dict[str, dict[str, Any]]) -> None:
    lab.config_dir.mkdir(parents=True, exist_ok=True)
    for svc, doc in docs.items():
        path = lab.config_dir / f"{svc}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)


def lab_from_options(lab_dir: Path | None, ports: str) -> LabSettings:
    lab = LabSettings()
    if lab_dir:
        lab = lab.model_copy(update={"lab_dir": lab_dir.resolve()})
    saved = lab.lab_dir / "lab.json"
    if saved.exists():
        # status/down/logs act on the lab that `up` started, with its ports and paths.
        return LabSettings.model_validate_json(saved.read_text())
    if ports == "auto":
        lab = lab.model_copy(update={"ports": free_ports()})
    return lab


@click.group()
@click.version_option(package_name="ml-defender", prog_name="mld-lab")
def main() -> None:
    """Run ML Defender locally: etcd and the five services under supervisord."""


@main.command()
@click.option(
    "--mode",
    type=click.Choice(["replay", "live"]),
    default=None,
    help="live: namespaces, XDP and real blocking (the default as root); replay: the pcap path "
    "(the default otherwise, and whenever --pcap is given).",
)
@click.option(
    "--pcap",
    "pcaps",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Capture(s) to replay (default: the public captures in ../shared/data/pcaps).",
)
@click.option("--pace", type=click.Choice(["fast", "realtime"]), default="realtime", show_default=True)
@click.option("--no-loop", is_flag=True, help="Replay the captures once instead of looping.")
@click.option("--lab-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--artifacts-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option(
    "--ports",
    type=click.Choice(["default", "auto"]),
    default="default",
    help="auto: pick free ports (several labs or tests side by side).",
)
@click.option("--firewall-backend", type=click.Choice(["dry_run", "nftables", "ipset"]), default="dry_run")
@click.option("--timeout", "timeout_s", type=float, default=60, show_default=True)
def up(
    mode: str | None,
    pcaps: tuple[Path, ...],
    pace: str,
    no_loop: bool,
    lab_dir: Path | None,
    artifacts_dir: Path | None,
    ports: str,
    firewall_backend: str,
    timeout_s: float,
) -> None:
    """Start the lab (idempotent: a running lab is reported, not started twice)."""
    lab = LabSettings()
    if lab_dir:
        lab = lab.model_copy(update={"lab_dir": lab_dir.resolve()})
    if control.supervisord_pid(lab):
        click.echo(f"lab already running (state in {lab.lab_dir}); nothing started")
        _print_status(lab_from_options(lab.lab_dir, "default"))
        return
    mode = default_mode(mode, pcaps)
    if mode == "live":
        click.echo(
            "mode: live (network namespaces, XDP, nftables; LAB=replay or --mode replay for the pcap path)"
        )
        sys.exit(_up_live(lab, artifacts_dir, ports, timeout_s))
    chosen = [p.resolve() for p in pcaps] or default_pcaps()
    if not chosen:
        click.echo(
            "mld-lab: error: no capture to replay: ../shared/data/pcaps is absent; pass --pcap FILE", err=True
        )
        sys.exit(2)
    update: dict[str, Any] = {
        "mode": mode,
        "pcaps": chosen,
        "pace": pace,
        "loop": not no_loop,
        "firewall_backend": firewall_backend,
        "venv_bin": Path(sys.executable).parent,
    }
    if artifacts_dir:
        update["artifacts_dir"] = artifacts_dir.resolve()
    if ports == "auto":
        update["ports"] = free_ports()
    lab = lab.model_copy(update=update)
    try:
        docs = build_configs(lab)
    except ConfigError as err:
        click.echo(f"mld-lab: error: {err.message}", err=True)
        sys.exit(2)
    for d in (lab.lab_dir, lab.log_dir, lab.artifacts_dir):
        d.mkdir(parents=True, exist_ok=True)
    write_configs(lab, docs)
    (lab.lab_dir / "lab.json").write_text(lab.model_dump_json(indent=2))
    programs = [etcd_program(lab), *service_programs(lab)]
    prom = _prometheus(lab)
    if prom is not None:
        programs.append(prom.program())
    lab.supervisor_conf.write_text(render_supervisord(lab, programs))
    try:
        control.start_supervisord(lab, lab.venv_bin)
        control.wait_running(lab, [p.name for p in programs], timeout_s)
    except control.LabError as err:
        click.echo(f"mld-lab: error: {err}", err=True)
        sys.exit(1)
    try:
        for line in control.seed_etcd(lab, etcd_documents(lab, REPO / "deploy" / "config")):
            click.echo(f"  config     {line}")
    except (control.LabError, MLDefenderError) as err:
        click.echo(f"mld-lab: error: cannot load the default configuration into etcd: {err}", err=True)
        sys.exit(1)
    _print_where(lab)
    if prom is not None:
        click.echo(f"  prometheus {prom.url}")
    else:
        click.echo("  prometheus not installed (apt-get install prometheus); metrics are still served above")


def default_mode(mode: str | None, pcaps: tuple[Path, ...]) -> str:
    """The issue's default: live when we are root (it needs namespaces, XDP and nftables), replay
    otherwise or when captures to replay are named."""
    if mode:
        return mode
    if pcaps:
        return "replay"
    return "live" if os.geteuid() == 0 else "replay"


def _prometheus(lab: LabSettings) -> Any:
    """Debian's Prometheus scraping every service, when installed and wanted."""
    if not lab.prometheus:
        return None
    from libs.lab.prometheus import start_prometheus

    p = lab.ports
    return start_prometheus(
        lab.lab_dir,
        {s: f"127.0.0.1:{p.metrics(s)}" for s in SERVICES},
        etcd_target=f"127.0.0.1:{p.etcd_client}",
        port=p.prometheus,
    )


def _up_live(lab: LabSettings, artifacts_dir: Path | None, ports: str, timeout_s: float) -> int:
    """Live mode (libs/lab/live.py): namespaces, XDP, real traffic and blocking; needs root."""
    from libs.lab import live

    update: dict[str, Any] = {"venv_bin": Path(sys.executable).parent}
    if artifacts_dir:
        update["artifacts_dir"] = artifacts_dir.resolve()
    if ports == "auto":
        update["ports"] = free_ports()
    try:
        lab = live.start(lab.model_copy(update=update), timeout_s)
    except ConfigError as err:
        click.echo(f"mld-lab: error: {err.message}", err=True)
        return 2
    except (live.LiveError, control.LabError) as err:
        click.echo(f"mld-lab: error: {err}", err=True)
        return 1
    live.print_where(lab)
    return 0


def _print_where(lab: LabSettings) -> None:
    p = lab.ports
    click.echo(
        f"ML Defender lab is up: replaying {len(lab.pcaps)} capture(s) at {lab.pace} pace"
        f"{' in a loop' if lab.loop else ''}."
    )
    click.echo("  status     make status-lab")
    click.echo(f"  logs       make logs-lab    (files in {lab.log_dir})")
    for svc in SERVICES:
        click.echo(f"  metrics    http://127.0.0.1:{p.metrics(svc)}/metrics   ({svc})")
    click.echo(f"  etcd       {lab.etcd_url}")
    click.echo(f"  artifacts  {lab.artifacts_dir}/YYYY-MM-DD/event_<id>.json")
    if lab.firewall_backend == "dry_run":
        click.echo(f"  blocks     {lab.dry_run_log}   (dry-run backend: what would be blocked)")
    click.echo(
        f'  ask        .venv/bin/mld-rag query --config {lab.config_dir / "rag.json"} "high divergence events from the last hour"'
    )
    click.echo(f"  tune       .venv/bin/mld-config --etcd {lab.etcd_url} edit ml-detector   (applied live)")
    click.echo("  stop       make kill-lab")


def _print_status(lab: LabSettings) -> int:
    """Print each program's real state; return 0 when all run, 3 when not running, 1 when some are down."""
    if not control.supervisord_pid(lab):
        click.echo(f"lab is not running (no supervisord for {lab.lab_dir})")
        for name in ("etcd", *SERVICES):
            click.echo(f"  {name:<12} STOPPED")
        return 3
    states = control.program_states(lab)
    beats = control.heartbeats(lab)
    bad = 0
    for s in states:
        extra = ""
        if s.name in SERVICES:
            extra = "  metrics " + ("up" if control.metrics_up(lab.ports.metrics(s.name)) else "DOWN")
            hb = beats.get(s.name)
            extra += (
                f"  heartbeat pid {hb.get('pid')} config rev {hb.get('config_revision')}"
                if hb and s.state == "RUNNING"
                else "  heartbeat none"
            )
        click.echo(f"  {s.name:<12} {s.state:<9} pid {s.pid or '-':<7} up {s.uptime_s:>6}s{extra}")
        bad += s.state != "RUNNING"
    return 1 if bad else 0


@main.command()
@click.option("--lab-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def status(lab_dir: Path | None) -> None:
    """Each program's real state (from supervisord) and whether its /metrics answers."""
    sys.exit(_print_status(lab_from_options(lab_dir, "default")))


@main.command()
@click.option("--lab-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def down(lab_dir: Path | None) -> None:
    """Stop every lab process; nothing is left behind."""
    lab = lab_from_options(lab_dir, "default")
    if not control.supervisord_pid(lab):
        click.echo("lab is not running")
    killed = control.shutdown(lab)
    if killed:
        click.echo(f"killed leftover processes: {killed}")
    if lab.mode != "live":
        click.echo("lab stopped")
        return
    from libs.lab import live

    gone = live.teardown(lab)  # live mode; also after a crash (found by name)
    if gone["namespaces"]:
        click.echo(f"removed namespaces: {', '.join(gone['namespaces'])}")
    if gone["killed"]:
        click.echo(f"killed leftover processes in them: {gone['killed']}")
    click.echo("lab stopped")


@main.command()
@click.argument("service", required=False)
@click.option("-f", "--follow", is_flag=True)
@click.option("-n", "--lines", type=int, default=40, show_default=True)
@click.option("--lab-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def logs(service: str | None, follow: bool, lines: int, lab_dir: Path | None) -> None:
    """Show the last lines of each service's log (or one service's)."""
    lab = lab_from_options(lab_dir, "default")
    names = [service] if service else ["etcd", *SERVICES]
    files = [lab.log_dir / f"{n}.log" for n in names if (lab.log_dir / f"{n}.log").exists()]
    if not files:
        click.echo(f"no logs in {lab.log_dir}")
        return
    args = ["tail", f"-n{lines}", *(["-F"] if follow else []), *map(str, files)]
    subprocess.run(args, check=False)


def _add_attack() -> None:
    from libs.lab.attacks import attack

    main.add_command(attack)


_add_attack()

if __name__ == "__main__":
    main()
