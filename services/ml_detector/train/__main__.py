"""`python -m services.ml_detector.train [--models DIR] [--work DIR] [--shared DIR] [--quick] [--no-netns]`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from libs.common.cli import handle_errors
from libs.common.log import setup_logging


@click.command()
@click.option(
    "--models", "models_dir", type=click.Path(path_type=Path), default=Path("models"), show_default=True
)
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=Path("var/train"),
    show_default=True,
    help="where the generated captures go (not committed)",
)
@click.option(
    "--shared",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/pcaps"),
    show_default=True,
    help="public captures with TRUTH.json; skipped when absent",
)
@click.option("--quick", is_flag=True, help="tiny data and few rounds: a smoke test, not for committing")
@click.option(
    "--netns/--no-netns",
    default=None,
    help="real-tool captures in network namespaces (root; default: on, off with --quick)",
)
@handle_errors("mld-train")
def main(models_dir: Path, work: Path, shared: Path, quick: bool, netns: bool | None) -> None:
    """Train the four detectors reproducibly and write models, samples and model cards."""
    from services.ml_detector.train.train import TrainConfig, run

    setup_logging("ml_detector_train")
    cfg = TrainConfig(rounds=10) if quick else TrainConfig()
    use_netns = (not quick) if netns is None else netns
    report = run(models_dir, work, shared if shared.exists() else None, cfg, quick=quick, netns=use_netns)
    click.echo(f"trained {sorted(report['models'])} in {report['seconds']} s -> {models_dir}", err=True)


if __name__ == "__main__":
    sys.exit(main())
