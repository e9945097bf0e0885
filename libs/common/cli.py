"""What every service CLI shares: `--config`, `--version`, `check-config`, `show-config`, and the
mapping of errors to exit codes (1 for a failure, 2 for usage or configuration) with one clear line
on stderr and no traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel

from libs.common.errors import MLDefenderError
from libs.common.settings import load_settings, settings_json

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)


def package_version() -> str:
    try:
        return version("ml-defender")
    except PackageNotFoundError:
        return "0+unknown"


def fail(prog: str, err: MLDefenderError) -> None:
    """Print `prog: error: <what> — fix: <how>` and exit with the error's code."""
    click.echo(f"{prog}: error: {err.message}", err=True)
    sys.exit(err.exit_code)


def handle_errors(prog: str) -> Callable[[F], F]:
    """Turn expected errors raised by a command into one line on stderr and an exit code."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except MLDefenderError as err:
                fail(prog, err)
            except BrokenPipeError:
                sys.stderr.close()
                sys.exit(1)
            return None

        return wrapper  # type: ignore[return-value]

    return deco


def config_option(service: str) -> Callable[[F], F]:
    env = "MLD_" + service.upper().replace("-", "_") + "_CONFIG"
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=env,
        default=None,
        help=f"JSON settings file (env {env}); defaults when omitted.",
    )


def add_config_commands(
    group: click.Group,
    prog: str,
    service: str,
    model: type[M],
    loader: Callable[[Path | None], M] | None = None,
) -> None:
    """Attach `check-config` and `show-config` to a service's click group."""
    load = loader or (lambda path: load_settings(model, path))

    @group.command("check-config")
    @config_option(service)
    @handle_errors(prog)
    def check_config(config_path: Path | None) -> None:
        """Validate the settings without opening any resource; exit 2 when invalid."""
        load(config_path)
        click.echo(f"{prog}: configuration OK ({config_path or 'defaults'})")

    @group.command("show-config")
    @config_option(service)
    @handle_errors(prog)
    def show_config(config_path: Path | None) -> None:
        """Print the effective settings as JSON (the form --config reads)."""
        click.echo(settings_json(load(config_path)))
