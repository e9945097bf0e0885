"""`mld-firewall`: the service (`run`) and the operator commands, which work on the backend directly."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from libs.common.cli import add_config_commands, config_option, handle_errors, package_version
from libs.common.errors import UsageError
from libs.common.log import setup_logging
from libs.common.settings import load_settings
from libs.watcher import EtcdSettings, etcd_options
from services.firewall.backends import open_backend
from services.firewall.config import FirewallSettings
from services.firewall.errors import TargetError
from services.firewall.targets import parse_target

PROG = "mld-firewall"


def _load(path: Path | None) -> FirewallSettings:
    return load_settings(FirewallSettings, path)


def _emit(doc: Any, as_json: bool, lines: Iterable[str]) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=None, separators=(",", ":")))
    else:
        for line in lines:
            click.echo(line)


@click.group()
@click.version_option(package_version(), prog_name=PROG)
def main() -> None:
    """ML Defender firewall: DetectionEvents with a DROP decision become timed bans in the kernel."""


@main.command()
@config_option("firewall")
@etcd_options
@handle_errors(PROG)
def run(config_path: Path | None, etcd: EtcdSettings | None) -> None:
    """Receive events and block their sources until SIGTERM (which commits the pending batch).

    With --etcd, settings follow etcd live (hot fields applied, restart fields logged); without it,
    SIGHUP re-reads --config.
    """
    from services.firewall.app import run as run_service

    run_service(_load(config_path), config_path=config_path, etcd=etcd)


@main.command("list")
@config_option("firewall")
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@handle_errors(PROG)
def list_cmd(config_path: Path | None, targets: tuple[str, ...], as_json: bool) -> None:
    """What the kernel holds now, with remaining times; with TARGETs only the bans covering them.

    `mld-firewall list 198.51.100.7` answers "is it blocked, by what, for how long" (exit 1 if not).
    """
    settings = _load(config_path)
    wanted = []
    for t in targets:
        try:
            wanted.append(parse_target(t))
        except TargetError as exc:
            raise UsageError(exc.what, "list", exc.fix) from None
    backend = open_backend(settings)
    try:
        elements = sorted(backend.read(), key=lambda e: (e.net.version, e.net))
    finally:
        backend.close()
    if wanted:
        elements = [
            e
            for e in elements
            if any(w.version == e.net.version and w.subnet_of(e.net) for w in wanted)  # type: ignore[arg-type]
        ]
    doc = {"backend": backend.name, "table": settings.table, "bans": [e.to_dict() for e in elements]}
    _emit(
        doc,
        as_json,
        [
            f"{e.to_dict()['target']}\texpires in {e.expires_ms / 1000:.0f}s\toffences {e.offences}"
            for e in elements
        ]
        + [f"{len(elements)} bans ({backend.name}, table {settings.table})"],
    )
    if wanted and not elements:
        raise SystemExit(1)


def _operator_firewall(settings: FirewallSettings) -> Any:
    from services.firewall.app import Firewall

    setup_logging("firewall", "warning")
    fw = Firewall(settings, open_backend(settings))
    fw.start()
    return fw


@main.command()
@config_option("firewall")
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--timeout-s", type=click.FloatRange(min=1), default=None, help="override timeout_s (no jitter)"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@handle_errors(PROG)
def block(config_path: Path | None, targets: tuple[str, ...], timeout_s: float | None, as_json: bool) -> None:
    """Ban addresses or prefixes now (allow-list, caps and escalation apply); exit 1 if any is refused."""
    settings = _load(config_path)
    if timeout_s is not None:
        settings = settings.model_copy(update={"timeout_s": timeout_s, "jitter_fraction": 0.0})
    fw = _operator_firewall(settings)
    results = []
    try:
        for t in targets:
            try:
                net = fw.planner.resolve(t)
                outcome = fw.planner.block(net)
                results.append({"target": t, "result": outcome})
            except TargetError as exc:
                results.append({"target": t, "result": "rejected", "reason": exc.reason, "error": exc.what})
        fw.drain()
    finally:
        fw.backend.close()
    refused = [r for r in results if r["result"] == "rejected"]
    _emit(
        {"results": results},
        as_json,
        [
            f"{r['target']}: {r['result']}" + (f" ({r['reason']}: {r['error']})" if "reason" in r else "")
            for r in results
        ],
    )
    if refused:
        raise SystemExit(1)


@main.command()
@config_option("firewall")
@click.argument("targets", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@handle_errors(PROG)
def unblock(config_path: Path | None, targets: tuple[str, ...], as_json: bool) -> None:
    """Remove bans (exact address or prefix as listed); exit 1 if a target is invalid."""
    settings = _load(config_path)
    nets = []
    for t in targets:
        try:
            nets.append(parse_target(t))
        except TargetError as exc:
            raise UsageError(exc.what, "unblock", exc.fix) from None
    fw = _operator_firewall(settings)
    try:
        results = [
            {"target": t, "was_banned": net in fw.planner.bans} for t, net in zip(targets, nets, strict=True)
        ]
        for net in nets:
            fw.unblock(net)
        fw.drain()
    finally:
        fw.backend.close()
    _emit(
        {"results": results},
        as_json,
        [f"{r['target']}: {'unblocked' if r['was_banned'] else 'was not banned'}" for r in results],
    )


@main.command()
@config_option("firewall")
@click.option("--yes", is_flag=True, help="really remove every ban")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@handle_errors(PROG)
def flush(config_path: Path | None, yes: bool, as_json: bool) -> None:
    """Remove every ban from our sets (nothing else is touched); needs --yes."""
    if not yes:
        raise UsageError("flush removes every ban", "flush", "add --yes to confirm")
    settings = _load(config_path)
    backend = open_backend(settings)
    try:
        n = backend.flush()
    finally:
        backend.close()
    _emit({"removed": n}, as_json, [f"removed {n} bans"])


@main.command()
@config_option("firewall")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@handle_errors(PROG)
def reconcile(config_path: Path | None, as_json: bool) -> None:
    """Create missing kernel objects, read the bans and drop any that the allow-list now covers."""
    fw = _operator_firewall(_load(config_path))
    try:
        removed = len(fw.planner.pending)  # deletes queued by the reconcile for allow-listed bans
        fw.drain()
        counts = {f"{fam}_{kind}": v for (fam, kind), v in fw.planner.counts().items()}
    finally:
        fw.backend.close()
    doc = {"elements": len(fw.planner.bans), "removed_allow_listed": removed, "by_kind": counts}
    _emit(doc, as_json, [f"{k}: {v}" for k, v in doc.items()])


add_config_commands(main, PROG, "firewall", FirewallSettings, _load)
