"""The click options every service's `run` takes to read its settings from etcd.

`@etcd_options` adds `--etcd URL`, `--etcd-prefix`, `--etcd-key-file`, `--config-cache DIR` (each with an
environment variable) and passes one `etcd: EtcdSettings | None` keyword to the command: None when
no endpoint is given, so `--config FILE` / defaults keep working without etcd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from libs.common.errors import ConfigError
from libs.common.settings import describe_validation_error
from libs.etcd_client.client import DEFAULT_PREFIX
from libs.etcd_client.settings import EtcdSettings

F = TypeVar("F", bound=Callable[..., Any])


def build_etcd_settings(
    endpoint: str | None,
    prefix: str = DEFAULT_PREFIX,
    key_file: Path | None = None,
    cache_dir: Path | None = None,
    events_endpoint: str | None = "tcp://127.0.0.1:5573",
) -> EtcdSettings | None:
    """EtcdSettings from CLI values, or None when no endpoint was given."""
    if not endpoint:
        return None
    values: dict[str, Any] = {"endpoint": endpoint, "prefix": prefix, "key_file": key_file}
    if cache_dir is not None:
        values["cache_dir"] = cache_dir
    values["events_endpoint"] = events_endpoint or None
    try:
        return EtcdSettings(**values)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc), "--etcd options", "check the etcd options"
        ) from None


def etcd_options(fn: F) -> F:
    """Decorate a click command; it receives `etcd=EtcdSettings | None`."""

    @click.option(
        "--etcd",
        "etcd_endpoint",
        envvar="MLD_ETCD_ENDPOINT",
        default=None,
        help="take settings live from etcd at this URL, e.g. http://127.0.0.1:2379 (env MLD_ETCD_ENDPOINT)",
    )
    @click.option(
        "--etcd-prefix",
        envvar="MLD_ETCD_PREFIX",
        default=DEFAULT_PREFIX,
        show_default=True,
        help="etcd key prefix (env MLD_ETCD_PREFIX)",
    )
    @click.option(
        "--etcd-key-file",
        envvar="MLD_ETCD_KEY_FILE",
        default=None,
        type=click.Path(dir_okay=False, path_type=Path),
        help="0600 key file for encrypted configuration values (env MLD_ETCD_KEY_FILE)",
    )
    @click.option(
        "--config-cache",
        envvar="MLD_CONFIG_CACHE",
        default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="directory of the last good configuration (default var/config-cache; env MLD_CONFIG_CACHE)",
    )
    @click.option(
        "--config-events",
        envvar="MLD_CONFIG_EVENTS",
        default="tcp://127.0.0.1:5573",
        show_default=True,
        help="where ConfigChange events go (rag-logger); empty disables (env MLD_CONFIG_EVENTS)",
    )
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        etcd_endpoint: str | None,
        etcd_prefix: str,
        etcd_key_file: Path | None,
        config_cache: Path | None,
        config_events: str,
        **kwargs: Any,
    ) -> Any:
        kwargs["etcd"] = build_etcd_settings(
            etcd_endpoint, etcd_prefix, etcd_key_file, config_cache, config_events
        )
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
