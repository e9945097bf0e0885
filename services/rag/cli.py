"""`mld-rag`: the service (`run`), questions over the index, and the tuning commands.

Question commands ask the running service over its socket and work on the index directly when it
does not answer (or with --direct). Thin: parse arguments, print, map errors to exit codes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from libs.common.cli import add_config_commands, config_option, handle_errors, package_version
from libs.common.errors import UsageError
from libs.common.settings import load_settings
from libs.watcher import EtcdSettings, etcd_options
from services.rag.config import PROG, SERVICE, RagSettings
from services.rag.errors import IndexError_, ServiceUnavailable, TuningError


def _settings(path: Path | None) -> RagSettings:
    return load_settings(RagSettings, path)


def _now_ns(text: str | None) -> int | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--now {text!r} is not an ISO time", "--now", "use e.g. 2026-03-10T12:00:00Z"
        ) from None
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1e9)


def _ask(settings: RagSettings, direct: bool, cmd: str, args: dict[str, Any]) -> Any:
    """Answer through the service when it is up; otherwise open the index here (after a catch-up)."""
    from services.rag.server import call

    # A rebuild re-reads every artifact: wait for it rather than for a question's timeout.
    timeout = 3_600_000 if cmd == "rebuild" else settings.query.client_timeout_ms
    if not direct:
        try:
            call(settings.query.endpoint, "ping", timeout_ms=500)
        except ServiceUnavailable:
            pass
        else:
            return call(settings.query.endpoint, cmd, args, timeout)
    from services.rag.app import lock_index
    from services.rag.core import RagCore, rebuild

    try:
        lock = lock_index(settings.index.dir)
    except IndexError_:
        if direct:
            raise
        # The service holds the index but was too busy (e.g. embedding a burst) to answer the ping:
        # it is up, so wait for its answer rather than failing.
        return call(settings.query.endpoint, cmd, args, max(timeout, 30_000))
    try:
        if cmd == "rebuild":
            core, report, seconds = rebuild(settings)
            core.close()
            return {"events": report.added, "damaged": len(report.damaged), "seconds": round(seconds, 3)}
        core = RagCore(settings)
        try:
            core.catch_up()
            e = core.engine
            handlers: dict[str, Callable[[], Any]] = {
                "query": lambda: e.query(args["question"], args.get("now_ns"), args.get("limit")),
                "search": lambda: e.search(args["text"], args.get("limit"), args.get("filters")),
                "recent": lambda: e.recent(args.get("limit"), args.get("filters")),
                "similar": lambda: e.similar(args["event_id"], args.get("limit")),
                "show": lambda: e.show(args["event_id"]),
                "stats": e.stats,
            }
            return handlers[cmd]()
        finally:
            core.close()
    finally:
        lock.close()


def _print_answer(ans: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(ans, indent=2, default=str))
        return
    parsed = ans.get("parsed") or {}
    desc = []
    if parsed.get("filters"):
        desc.append("filters " + json.dumps(parsed["filters"], default=str))
    if parsed.get("semantic"):
        desc.append(f"ranked by meaning of {parsed['semantic']!r}")
    results = ans.get("results") or []
    click.echo(
        f"{len(results)} result(s) in {ans.get('took_ms', 0):.1f} ms"
        + (f" — {'; '.join(desc)}" if desc else "")
    )
    for i, h in enumerate(results, 1):
        sim = f"  sim {h['similarity']:.3f}" if "similarity" in h else ""
        click.echo(
            f"{i:3}. {h['event_id']}  {h['time']}  {h['src_ip']}:{h['src_port']} -> {h['dst_ip']}:{h['dst_port']}"
            f" {h['protocol']}  final {h['final_score']:.2f} fast {h['fast_score']:.2f} ml {h['ml_score']:.2f}"
            f" div {h['divergence']:.2f}{sim}"
        )
        click.echo(f"     why: {h['why']}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), prog_name=PROG)
def main() -> None:
    """ML Defender rag: local semantic search over the detection artifacts, and detector tuning."""


add_config_commands(main, PROG, SERVICE, RagSettings)

_direct = click.option("--direct", is_flag=True, help="Work on the index here even if the service is up.")
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
_limit = click.option(
    "--limit", "-n", type=int, default=None, help="How many answers (default query.default_limit)."
)


@main.command()
@config_option(SERVICE)
@etcd_options
@handle_errors(PROG)
def run(config_path: Path | None, etcd: EtcdSettings | None) -> None:
    """Run the service: ingest the artifacts, follow new pairs, answer on query.endpoint.

    With --etcd, settings follow config/rag live (libs/watcher): ingest, index search and query words.
    """
    from libs.common.log import setup_logging
    from libs.watcher import ConfigRuntime
    from services.rag.app import run_service
    from services.rag.config import HOT_FIELDS

    settings = _settings(config_path)
    setup_logging(SERVICE, settings.log_level)
    runtime = ConfigRuntime(
        SERVICE, RagSettings, initial=settings, hot_fields=HOT_FIELDS, etcd=etcd, version=package_version()
    )
    settings = runtime.start()  # before the index opens: etcd, else its disk cache, else the file
    try:
        run_service(settings, runtime)
    finally:
        runtime.stop()


@main.command()
@click.argument("question", nargs=-1, required=True)
@click.option("--now", "now", default=None, help="Reference time for 'yesterday', 'last 2 hours' (ISO, UTC).")
@_limit
@_json
@_direct
@config_option(SERVICE)
@handle_errors(PROG)
def query(
    question: tuple[str, ...],
    now: str | None,
    limit: int | None,
    as_json: bool,
    direct: bool,
    config_path: Path | None,
) -> None:
    """Ask in plain language, e.g. "Show me high divergence events from yesterday"."""
    s = _settings(config_path)
    _print_answer(
        _ask(s, direct, "query", {"question": " ".join(question), "now_ns": _now_ns(now), "limit": limit}),
        as_json,
    )


@main.command()
@click.argument("text", nargs=-1, required=True)
@_limit
@_json
@_direct
@config_option(SERVICE)
@handle_errors(PROG)
def search(
    text: tuple[str, ...], limit: int | None, as_json: bool, direct: bool, config_path: Path | None
) -> None:
    """Rank events by meaning only (the words are not parsed into filters)."""
    _print_answer(
        _ask(_settings(config_path), direct, "search", {"text": " ".join(text), "limit": limit}), as_json
    )


@main.command()
@_limit
@_json
@_direct
@config_option(SERVICE)
@handle_errors(PROG)
def recent(limit: int | None, as_json: bool, direct: bool, config_path: Path | None) -> None:
    """The newest events."""
    _print_answer(_ask(_settings(config_path), direct, "recent", {"limit": limit}), as_json)


@main.command()
@click.argument("event_id")
@_limit
@_json
@_direct
@config_option(SERVICE)
@handle_errors(PROG)
def similar(event_id: str, limit: int | None, as_json: bool, direct: bool, config_path: Path | None) -> None:
    """Events that mean the same as EVENT_ID."""
    _print_answer(
        _ask(_settings(config_path), direct, "similar", {"event_id": event_id, "limit": limit}), as_json
    )


@main.command()
@click.argument("event_id")
@_direct
@config_option(SERVICE)
@handle_errors(PROG)
def show(event_id: str, direct: bool, config_path: Path | None) -> None:
    """The whole event (its JSON artifact) and why it was kept."""
    click.echo(
        json.dumps(
            _ask(_settings(config_path), direct, "show", {"event_id": event_id}), indent=2, default=str
        )
    )


@main.command()
@_json
@_direct
@config_option(SERVICE)
@handle_errors(PROG)
def stats(as_json: bool, direct: bool, config_path: Path | None) -> None:
    """What the index holds."""
    st = _ask(_settings(config_path), direct, "stats", {})
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    for k, v in st.items():
        click.echo(f"{k}: {json.dumps(v, default=str) if isinstance(v, dict) else v}")


@main.command("rebuild")
@_direct
@config_option(SERVICE)
@handle_errors(PROG)
def rebuild_cmd(direct: bool, config_path: Path | None) -> None:
    """Rebuild the index from the artifacts (new index beside the old one, then swapped in)."""
    r = _ask(_settings(config_path), direct, "rebuild", {})
    if "error" in r:
        raise TuningError(f"rebuild failed: {r['error']}", "rebuild", "see the service log")
    click.echo(
        f"{PROG}: rebuilt: {r['events']} events, {r['damaged']} damaged pairs skipped, {r['seconds']} s"
    )


# ---- tuning ---------------------------------------------------------------------------------
def _client(s: RagSettings, endpoint: str | None) -> Any:
    from libs.etcd_client import EtcdClient

    return EtcdClient(endpoint or s.tuning.etcd_endpoint, s.tuning.prefix)


def _confirm_and_commit(
    client: Any,
    plans: list[Any],
    mutators: dict[str, Callable[[dict[str, Any]], dict[str, Any]]],
    command: str,
    reason: str,
    yes: bool,
    as_json: bool,
    retries: int,
) -> None:
    from services.rag.tuning import commit

    changes = [(p.service, path, old, new) for p in plans for path, old, new in p.diff]
    if not as_json:
        for service, path, old, new in changes:
            click.echo(f"  {service}: {path}: {json.dumps(old)} -> {json.dumps(new)}")
    if not changes:
        click.echo(json.dumps({"changed": []}) if as_json else f"{PROG}: nothing to change")
        return
    if not yes and not click.confirm(f"apply these {len(changes)} change(s) to etcd?", default=False):
        raise UsageError("not applied", command, "answer yes, or pass --yes")
    results = []
    for p in plans:
        if not p.diff:
            continue
        r = commit(client, p.service, mutators[p.service], f"rag {command}", reason, retries)
        results.append({"service": p.service, "key": client.full_key(r.key), "revision": r.new_revision})
    if as_json:
        click.echo(
            json.dumps(
                {
                    "changed": [{"service": s, "path": pa, "old": o, "new": n} for s, pa, o, n in changes],
                    "written": results,
                },
                default=str,
            )
        )
    else:
        for r in results:
            click.echo(f"{PROG}: {r['service']}: written {r['key']} at revision {r['revision']} (audited)")


def _step_command(direction: int, command: str) -> Callable[..., None]:
    @click.option("--yes", "-y", is_flag=True, help="Do not ask before writing.")
    @click.option("--reason", default="", help="Recorded in the audit entry.")
    @click.option(
        "--etcd", "etcd_endpoint", default=None, help="etcd endpoint (default tuning.etcd_endpoint)."
    )
    @_json
    @config_option(SERVICE)
    @handle_errors(PROG)
    def cmd(
        yes: bool, reason: str, etcd_endpoint: str | None, as_json: bool, config_path: Path | None
    ) -> None:
        from services.rag.tuning import Plan, current_document, step_thresholds

        s = _settings(config_path)
        t = s.tuning
        client = _client(s, etcd_endpoint)

        def mutate(doc: dict[str, Any]) -> dict[str, Any]:
            return step_thresholds(doc, direction, t.step, t.bounds)

        old = current_document(client, t.detector_service)
        plan = Plan(t.detector_service, old, mutate(old))
        _confirm_and_commit(
            client, [plan], {t.detector_service: mutate}, command, reason, yes, as_json, t.cas_retries
        )

    cmd.__doc__ = (
        "Lower every detection threshold one bounded step (more sensitive)."
        if direction < 0
        else "Raise every detection threshold one bounded step (fewer alerts)."
    )
    return cmd


main.command("accelerate")(_step_command(-1, "accelerate"))
main.command("decelerate")(_step_command(+1, "decelerate"))


@main.command()
@click.option("--cpu", "cpu_pct", type=float, required=True, help="CPU limit, percent of the machine.")
@click.option("--ram", "ram_mb", type=float, required=True, help="Memory limit in MB.")
@click.option("--temp", "temp_c", type=float, default=None, help="Temperature limit in °C (if reported).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before writing.")
@click.option("--reason", default="", help="Recorded in the audit entry.")
@click.option("--etcd", "etcd_endpoint", default=None, help="etcd endpoint (default tuning.etcd_endpoint).")
@_json
@config_option(SERVICE)
@handle_errors(PROG)
def optimize(
    cpu_pct: float,
    ram_mb: float,
    temp_c: float | None,
    yes: bool,
    reason: str,
    etcd_endpoint: str | None,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Choose detector and sniffer settings that keep this node under --cpu/--ram/--temp, from measured usage."""
    from services.rag.tuning import (
        Limits,
        Plan,
        apply_profile,
        choose_profile,
        current_document,
        measure_usage,
    )

    s = _settings(config_path)
    usage = measure_usage()
    profile, _worst, reasons = choose_profile(usage, Limits(cpu_pct, ram_mb, temp_c))
    click.echo(
        (
            f"measured: cpu {usage.cpu_pct}% ram {usage.ram_mb} MB temp "
            f"{'n/a' if usage.temp_c is None else f'{usage.temp_c} C'}; profile {profile} ({'; '.join(reasons)})"
        ),
        err=as_json,
    )
    client = _client(s, etcd_endpoint)
    # The profiles name the parts by role; the etcd service names come from the settings.
    roles = {s.tuning.detector_service: "ml-detector", s.tuning.sniffer_service: "sniffer"}
    services = tuple(roles)

    def mutator(role: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda doc: apply_profile(doc, role, profile)

    mutators = {svc: mutator(role) for svc, role in roles.items()}
    plans = [
        Plan(svc, current_document(client, svc), mutators[svc](current_document(client, svc)))
        for svc in services
    ]
    _confirm_and_commit(
        client,
        plans,
        mutators,
        "optimize",
        reason or f"profile {profile}",
        yes,
        as_json,
        s.tuning.cas_retries,
    )


if __name__ == "__main__":
    sys.exit(main())
