"""`mld-config`: read and edit service configuration in etcd, validated with the service's own model.

Every write is a compare-and-swap on the mod revision that was read (a concurrent edit makes it
fail instead of being overwritten) and leaves an `audit/...` record.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from libs.common.cli import handle_errors, package_version
from libs.common.errors import ConfigError, UsageError
from libs.etcd_client.client import DEFAULT_ENDPOINT, DEFAULT_PREFIX, EtcdClient
from libs.etcd_client.crypto import generate_key
from libs.etcd_client.edit import (
    SERVICE_MODELS,
    cas_edit,
    config_key,
    default_document,
    service_model,
    validate_document,
)
from libs.etcd_client.envelope import describe_value

PROG = "mld-config"


def _client(ctx: click.Context) -> EtcdClient:
    o = ctx.obj
    return EtcdClient(o["endpoint"], o["prefix"], o["key_file"], o["timeout"])


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def _read_doc(source: str) -> Any:
    """A JSON document from a file path or `-` (stdin), with a clear error when it is not JSON."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot read {source}: {exc.strerror}", source, "pass an existing JSON file or -"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            source,
            "fix the JSON syntax",
        ) from None


def _print_changes(old: Any, new: Any, hot_fields: tuple[str, ...]) -> int:
    from libs.watcher.diff import MISSING, diff

    changes = diff(old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}, hot_fields)
    for c in changes:
        o = "(absent)" if c.old is MISSING else json.dumps(c.old)
        n = "(absent)" if c.new is MISSING else json.dumps(c.new)
        click.echo(f"{c.path}: {o} -> {n}  [{'hot' if c.hot else 'restart required'}]")
    return len(changes)


service_arg = click.argument("service", type=click.Choice(sorted(SERVICE_MODELS)))
node_opt = click.option(
    "--node", default=None, help="edit the override of one node (config/<service>/nodes/<node>)"
)


@click.group()
@click.version_option(package_version(), prog_name=PROG)
@click.option(
    "--etcd",
    "endpoint",
    envvar="MLD_ETCD_ENDPOINT",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="etcd client URL (env MLD_ETCD_ENDPOINT)",
)
@click.option(
    "--prefix",
    envvar="MLD_ETCD_PREFIX",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="key prefix (env MLD_ETCD_PREFIX)",
)
@click.option(
    "--key-file",
    envvar="MLD_ETCD_KEY_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="0600 key file for encrypted values (env MLD_ETCD_KEY_FILE)",
)
@click.option("--timeout", default=3.0, show_default=True, help="seconds per etcd request")
@click.pass_context
def main(ctx: click.Context, endpoint: str, prefix: str, key_file: Path | None, timeout: float) -> None:
    """Read, validate and edit ML Defender configuration stored in etcd."""
    ctx.obj = {"endpoint": endpoint, "prefix": prefix, "key_file": key_file, "timeout": timeout}


@main.command()
@service_arg
@node_opt
@click.option("--meta", is_flag=True, help="print revision and storage format instead of the document")
@click.option("--defaults", is_flag=True, help="print the model's defaults when the key is absent")
@click.pass_context
@handle_errors(PROG)
def get(ctx: click.Context, service: str, node: str | None, meta: bool, defaults: bool) -> None:
    """Print the stored document of SERVICE (JSON)."""
    client = _client(ctx)
    kv = client.get_kv(config_key(service, node))
    if kv is None:
        if defaults and node is None:
            model, hot = service_model(service)
            click.echo(_dump(default_document(model, hot)))
            return
        raise UsageError(
            f"no configuration stored at {client.full_key(config_key(service, node))}",
            service,
            "run `mld-config init` (loads deploy/config) or `mld-config set`",
        )
    if meta:
        info = {
            "key": client.full_key(kv.key),
            "mod_revision": kv.mod_revision,
            "version": kv.version,
            **describe_value(kv.raw),
        }
        click.echo(_dump(info))
        return
    click.echo(_dump(client.decode(kv)))


@main.command("set")
@service_arg
@click.argument("source")
@node_opt
@click.option("--encrypt", is_flag=True, help="store encrypted (ChaCha20-Poly1305, needs --key-file)")
@click.option("--compress", is_flag=True, help="store zstd-compressed")
@click.option("--reason", default="", help="why (kept in the audit record)")
@click.pass_context
@handle_errors(PROG)
def set_cmd(
    ctx: click.Context,
    service: str,
    source: str,
    node: str | None,
    encrypt: bool,
    compress: bool,
    reason: str,
) -> None:
    """Validate the JSON document in SOURCE (file or -) and store it for SERVICE (CAS)."""
    client = _client(ctx)
    doc = _read_doc(source)
    _model, hot = service_model(service)
    result = cas_edit(
        client,
        service,
        lambda _old: doc,
        node=node,
        command=f"set {source}",
        reason=reason,
        encrypt=encrypt,
        compress=compress,
        retries=0,
    )
    _print_changes(result.old or {}, result.new, hot)
    click.echo(f"{PROG}: stored {client.full_key(result.key)} at revision {result.new_revision}")


@main.command()
@service_arg
@node_opt
@click.option("--encrypt", is_flag=True, help="store encrypted (needs --key-file)")
@click.option("--compress", is_flag=True, help="store zstd-compressed")
@click.option("--reason", default="", help="why (kept in the audit record)")
@click.pass_context
@handle_errors(PROG)
def edit(
    ctx: click.Context, service: str, node: str | None, encrypt: bool, compress: bool, reason: str
) -> None:
    """Open the document of SERVICE in $EDITOR; validate and store it (CAS on what was opened)."""
    client = _client(ctx)
    _model, hot = service_model(service)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    edited: dict[str, Any] = {}

    def mutate(old: Any) -> Any:
        if "doc" in edited:  # a CAS retry must not silently re-apply over someone else's edit
            raise UsageError(
                "the document changed while you were editing", service, "run `mld-config edit` again"
            )
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"{service}-", delete=False) as f:
            f.write(_dump(old) + "\n")
            path = f.name
        try:
            subprocess.run([*shlex.split(editor), path], check=True)
            edited["doc"] = _read_doc(path)
        except subprocess.CalledProcessError as exc:
            raise UsageError(f"editor exited with {exc.returncode}", editor, "nothing was stored") from None
        finally:
            os.unlink(path)
        return edited["doc"]

    result = cas_edit(
        client,
        service,
        mutate,
        node=node,
        command="edit",
        reason=reason,
        encrypt=encrypt,
        compress=compress,
        retries=1,
    )
    if not _print_changes(result.old or {}, result.new, hot):
        click.echo(f"{PROG}: no changes")
    click.echo(f"{PROG}: stored {client.full_key(result.key)} at revision {result.new_revision}")


@main.command()
@service_arg
@click.argument("source", required=False)
@node_opt
@click.pass_context
@handle_errors(PROG)
def diff(ctx: click.Context, service: str, source: str | None, node: str | None) -> None:
    """Show what storing SOURCE would change (without SOURCE: stored document vs. defaults).

    Exit status 0 when identical, 1 when they differ (like diff(1)); SOURCE is validated first.
    """
    client = _client(ctx)
    model, hot = service_model(service)
    stored = client.get(config_key(service, node)) or {}
    if source is None:
        changed = _print_changes(default_document(model, hot), stored, hot)
    else:
        doc = _read_doc(source)
        validate_document(client, service, doc, node, model)
        changed = _print_changes(stored, doc, hot)
    sys.exit(1 if changed else 0)


@main.command()
@service_arg
@node_opt
@click.option("-n", "limit", default=10, show_default=True, help="how many versions")
@click.pass_context
@handle_errors(PROG)
def history(ctx: click.Context, service: str, node: str | None, limit: int) -> None:
    """List past versions of SERVICE's document (newest first) with what each changed."""
    client = _client(ctx)
    _model, hot = service_model(service)
    versions = client.history(config_key(service, node), limit + 1)
    if not versions:
        raise UsageError("no history: the key is absent", service, "store a document first")
    for i, kv in enumerate(versions[:limit]):
        click.echo(f"revision {kv.mod_revision} (version {kv.version}, {describe_value(kv.raw)['format']})")
        try:
            new = client.decode(kv)
            old = client.decode(versions[i + 1]) if i + 1 < len(versions) else {}
            _print_changes(old, new, hot)
        except Exception as exc:  # an old invalid or undecodable version is still history
            click.echo(f"  (cannot decode: {exc})")


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deploy/config"),
    show_default=True,
    help="one <service>.json per service",
)
@click.pass_context
@handle_errors(PROG)
def init(ctx: click.Context, directory: Path) -> None:
    """Store each deploy/config/<service>.json that is absent from etcd (existing keys are kept)."""
    client = _client(ctx)
    for service in sorted(SERVICE_MODELS):
        path = directory / f"{service}.json"
        if not path.exists():
            continue
        doc = _read_doc(str(path))
        validate_document(client, service, doc)
        if client.get_kv(config_key(service)) is not None:
            click.echo(f"{service}: present, kept")
            continue
        try:
            rev = client.cas(config_key(service), doc, 0)
        except Exception as exc:  # created concurrently by another node: keep theirs
            click.echo(f"{service}: not stored ({exc})")
            continue
        click.echo(f"{service}: loaded {path} at revision {rev}")


@main.command()
@click.option("--node", default=None, help="only this node")
@click.pass_context
@handle_errors(PROG)
def status(ctx: click.Context, node: str | None) -> None:
    """Heartbeats (nodes/...) and the last configuration result of every service (status/...)."""
    client = _client(ctx)
    for kv in client.get_prefix("nodes/" + (f"{node}/" if node else "")):
        hb = client.decode(kv)
        click.echo(f"{kv.key}: pid {hb.get('pid')} revision {hb.get('config_revision')} {hb.get('status')}")
    for kv in client.get_prefix("status/" + (f"{node}/" if node else "")):
        st = client.decode(kv)
        line = f"{kv.key}: {st.get('result')} revision {st.get('revision')}"
        if st.get("error"):
            line += f" error: {st['error']}"
        if st.get("pending_restart"):
            line += f" pending restart: {', '.join(st['pending_restart'])}"
        click.echo(line)


def node_health(heartbeat: dict[str, Any], ttl_left_s: int, ttl_s: int, config: dict[str, Any] | None) -> str:
    """healthy / degraded (last config change refused, or a restart pending) / stale (beats missed)."""
    if ttl_left_s >= 0 and ttl_s > 0 and ttl_left_s < ttl_s / 3:
        return "stale"  # the lease is refreshed every ttl/3: two beats were missed
    if heartbeat.get("pending_restart") or "failed" in str(heartbeat.get("status", "")):
        return "degraded"
    if config is not None and config.get("result") == "REJECTED":
        return "degraded"
    return "healthy"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line instead of a table")
@click.pass_context
@handle_errors(PROG)
def nodes(ctx: click.Context, as_json: bool) -> None:
    """Registered nodes and their services (leased heartbeats nodes/<node>/<service>) with health.

    A service that stops beating disappears when its lease (10 s) expires; one whose lease is
    running out is `stale`; `degraded` when its last configuration change was refused or a
    restart is pending.
    """
    client = _client(ctx)
    rows = []
    for kv in client.get_prefix("nodes/"):
        parts = kv.key.split("/")
        if len(parts) != 3:
            continue
        hb = client.decode(kv)
        ttl_left, ttl = -1, 0
        if kv.lease:
            lease = client._post("kv/lease/timetolive", {"ID": kv.lease})
            ttl_left, ttl = int(lease.get("TTL", -1)), int(lease.get("grantedTTL", 0))
        st = client.get(f"status/{parts[1]}/{parts[2]}/config")
        rows.append(
            {
                "node": parts[1],
                "service": parts[2],
                "health": node_health(hb, ttl_left, ttl, st),
                "pid": hb.get("pid"),
                "version": hb.get("version"),
                "config_revision": hb.get("config_revision"),
                "lease_ttl_left_s": ttl_left,
                "status": hb.get("status"),
            }
        )
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    if not rows:
        click.echo(f"{PROG}: no node registered under {client.full_key('nodes/')}")
        return
    click.echo(f"{'NODE':<16} {'SERVICE':<12} {'HEALTH':<9} {'PID':>7} {'REVISION':>8} {'TTL':>4}  STATUS")
    for r in rows:
        click.echo(
            f"{r['node']:<16} {r['service']:<12} {r['health']:<9} {r['pid']!s:>7} "
            f"{r['config_revision']!s:>8} {r['lease_ttl_left_s']:>4}  {r['status']}"
        )


@main.command()
@click.argument("service", required=False, type=click.Choice(sorted(SERVICE_MODELS)))
@click.option(
    "--write-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write <service>.json files there (e.g. deploy/config) instead of printing",
)
@click.option("--all", "all_fields", is_flag=True, help="every field, not only the hot (live-tunable) ones")
@handle_errors(PROG)
def defaults(service: str | None, write_dir: Path | None, all_fields: bool) -> None:
    """Print (or write) the default document of SERVICE, or of every service, from its model.

    By default only the hot fields: the part operators tune live (what deploy/config holds).
    """
    for name in [service] if service else sorted(SERVICE_MODELS):
        model, hot = service_model(name)
        text = _dump(default_document(model, None if all_fields else hot)) + "\n"
        if write_dir is None:
            click.echo(text, nl=False)
        else:
            write_dir.mkdir(parents=True, exist_ok=True)
            (write_dir / f"{name}.json").write_text(text)
            click.echo(f"{PROG}: wrote {write_dir / f'{name}.json'}")


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors(PROG)
def keygen(path: Path) -> None:
    """Create a new encryption key file (mode 0600) at PATH."""
    key = generate_key(path)
    click.echo(f"{PROG}: wrote key {key.key_id} to {path} (mode 0600); keep it out of etcd and backups")


if __name__ == "__main__":
    main()
