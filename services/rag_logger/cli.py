"""`mld-rag-logger`: run, verify, check-config, show-config. Parses arguments, maps errors to exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from libs.common.cli import add_config_commands, config_option, handle_errors, package_version
from libs.common.settings import load_settings
from libs.watcher import EtcdSettings, etcd_options
from services.rag_logger.config import SERVICE, RagLoggerSettings

PROG = "mld-rag-logger"


@click.group()
@click.version_option(package_version(), prog_name=PROG)
def main() -> None:
    """Durable event artifacts: keeps the detector's notable events as .pb + .json pairs."""


@main.command()
@config_option(SERVICE)
@etcd_options
@handle_errors(PROG)
def run(config_path: Path | None, etcd: EtcdSettings | None) -> None:
    """Receive events and write them durably until SIGTERM (then drain and exit 0).

    With --etcd, settings follow config/rag-logger live (libs/watcher): keep policy, commit, storage.
    """
    from libs.common.log import setup_logging
    from libs.watcher import ConfigRuntime
    from services.rag_logger.app import run as run_app
    from services.rag_logger.config import HOT_FIELDS

    settings = load_settings(RagLoggerSettings, config_path)
    setup_logging(SERVICE, settings.log_level)
    runtime = ConfigRuntime(
        SERVICE,
        RagLoggerSettings,
        initial=settings,
        hot_fields=HOT_FIELDS,
        etcd=etcd,
        version=package_version(),
    )
    settings = runtime.start()  # before the writer opens: etcd, else its disk cache, else the file
    try:
        code = run_app(settings, runtime=runtime)
    finally:
        runtime.stop()
    sys.exit(code)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--repair", is_flag=True, help="First remove temp files and rebuild missing .json from .pb.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary instead of lines.")
@click.option("--quiet", is_flag=True, help="Print only problems and the summary.")
@handle_errors(PROG)
def verify(directory: Path, repair: bool, as_json: bool, quiet: bool) -> None:
    """Check every artifact pair under DIRECTORY (the root or one day); exit 1 when any is wrong."""
    from services.rag_logger.verify import repair as do_repair
    from services.rag_logger.verify import verify as do_verify

    if repair:
        rec = do_repair(directory)
        if not as_json:
            click.echo(
                f"repaired: {rec.temp_files_removed} temp files removed, {rec.pairs_repaired} pairs completed"
            )
    rep = do_verify(directory)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "pairs_ok": rep.pairs_ok,
                    "events": rep.events,
                    "configs": rep.configs,
                    "problems": [p.__dict__ for p in rep.problems],
                    "notes": rep.notes,
                }
            )
        )
    else:
        if not quiet:
            for note in rep.notes:
                click.echo(f"note: {note}")
        for problem in rep.problems:
            click.echo(f"problem: {problem.line()}")
        click.echo(
            f"{PROG}: {rep.pairs_ok} pairs ok ({rep.events} events, {rep.configs} config changes), "
            f"{len(rep.problems)} problems"
        )
    if rep.problems:
        sys.exit(1)


add_config_commands(main, PROG, SERVICE, RagLoggerSettings)
