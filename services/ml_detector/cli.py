"""`mld-detector`: run the service, analyze captures, list models, check and show settings.
Thin: parse arguments, call the core, map errors to exit codes (1 failure, 2 usage/config)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from libs.common.cli import add_config_commands, config_option, handle_errors, package_version
from libs.common.errors import UsageError
from libs.common.settings import load_settings
from libs.watcher import EtcdSettings, etcd_options
from ml_defender.v1 import detection_pb2
from services.ml_detector.config import DetectorSettings

PROG = "mld-detector"


@click.group()
@click.version_option(package_version(), prog_name=PROG)
def main() -> None:
    """ML detector: four LightGBM models plus the fast detector, maximum threat wins."""


@main.command()
@config_option("ml-detector")
@etcd_options
@handle_errors(PROG)
def run(config_path: Path | None, etcd: EtcdSettings | None) -> None:
    """Score FlowBatch messages and send DetectionEvents to the firewall and the rag-logger.

    With --etcd, settings follow config/ml-detector live (libs/watcher); hot fields apply between batches.
    """
    from libs.common.log import setup_logging
    from libs.watcher import ConfigRuntime
    from services.ml_detector.app import SERVICE, DetectorApp
    from services.ml_detector.config import HOT_FIELDS
    from services.ml_detector.errors import ModelError
    from services.ml_detector.metrics import detector_metrics

    settings = load_settings(DetectorSettings, config_path)
    setup_logging(SERVICE, settings.log_level)
    detector_metrics()  # registers the detector's metrics before the runtime starts reporting
    runtime = ConfigRuntime(
        "ml-detector",
        DetectorSettings,
        initial=settings,
        hot_fields=HOT_FIELDS,
        etcd=etcd,
        version=package_version(),
    )
    settings = runtime.start()  # before models and sockets: etcd, else its disk cache, else the file
    try:
        app = DetectorApp(settings, config_path)
        if runtime.revision:
            app.apply(settings, runtime.revision)  # stamp events with the etcd revision in force

        def apply_step(_old: DetectorSettings, new: DetectorSettings) -> None:
            # a rollback passes the settings in force again: keep their revision
            rev = runtime.revision if new is runtime.current else runtime.applying_revision
            if not app.apply(new, rev):
                raise ModelError("models refused (see the log)", "models", "fix the model settings")

        runtime.add_step(apply_step)
        code = app.run()
    finally:
        runtime.stop()
    sys.exit(code)


@main.command()
@click.argument("pcaps", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--jsonl", is_flag=True, help="one JSON event per flow on stdout (the form of the .json artifacts)"
)
@click.option(
    "--engine", type=click.Choice(["lightgbm", "lleaves", "onnx"]), default=None, help="override engine"
)
@config_option("ml-detector")
@handle_errors(PROG)
def analyze(pcaps: tuple[Path, ...], jsonl: bool, engine: str | None, config_path: Path | None) -> None:
    """Score every flow of the given captures; summary and errors on stderr."""
    from services.ml_detector.analyze import analyze as run_analyze
    from services.ml_detector.analyze import jsonl as to_jsonl
    from services.ml_detector.analyze import text_line

    if not pcaps:
        raise UsageError(
            "no capture given", "analyze", f"pass one or more pcap files: {PROG} analyze FILE.pcap"
        )
    settings = load_settings(DetectorSettings, config_path)
    if engine:
        settings = settings.model_copy(update={"engine": engine})
    out = sys.stdout

    def emit(ev: detection_pb2.DetectionEvent) -> None:
        out.write((to_jsonl if jsonl else text_line)(ev) + "\n")

    summary = run_analyze(pcaps, settings, emit)
    out.flush()
    click.echo(f"{PROG}: {summary.line()}", err=True)
    if summary.error is not None:
        raise summary.error


@main.command("models")
@config_option("ml-detector")
@handle_errors(PROG)
def models_cmd(config_path: Path | None) -> None:
    """Load and check the configured models (embedded sample included); print name, version, engine."""
    from services.ml_detector.models import describe, load_model_set

    settings = load_settings(DetectorSettings, config_path)
    for m in describe(load_model_set(settings)):
        click.echo(f"{m['name']:<11} {m['version']} {m['engine']:<8} {m['path']}")


def _load_and_check(path: Path | None) -> DetectorSettings:
    """Settings plus the models they select: check-config refuses a bad model file too."""
    from services.ml_detector.models import load_model_set

    settings = load_settings(DetectorSettings, path)
    load_model_set(settings)
    return settings


add_config_commands(main, PROG, "ml-detector", DetectorSettings, loader=_load_and_check)
