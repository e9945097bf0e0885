"""`@etcd_options`: no endpoint means no etcd (file/defaults keep working); bad values exit 2."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from libs.common.cli import handle_errors
from libs.watcher import EtcdSettings, etcd_options

pytestmark = pytest.mark.unit


@click.command()
@etcd_options
@handle_errors("demo")
def demo(etcd: EtcdSettings | None) -> None:
    click.echo("none" if etcd is None else etcd.model_dump_json())


def test_without_endpoint_there_is_no_etcd() -> None:
    assert CliRunner().invoke(demo, [], env={"MLD_ETCD_ENDPOINT": ""}).output.strip() == "none"


def test_options_and_environment(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        demo,
        ["--etcd", "http://127.0.0.1:2390", "--config-cache", str(tmp_path), "--config-events", ""],
        env={"MLD_ETCD_PREFIX": "/other"},
    )
    s = EtcdSettings.model_validate_json(r.output)
    assert (s.endpoint, s.prefix, s.cache_dir, s.events_endpoint) == (
        "http://127.0.0.1:2390",
        "/other",
        tmp_path,
        None,
    )


def test_bad_endpoint_is_a_configuration_error() -> None:
    from libs.common.errors import ConfigError
    from libs.etcd_client import EtcdClient

    with pytest.raises(ConfigError, match="bad etcd endpoint"):
        EtcdClient("ftp://x")
