"""The lab plan is plain data: ports, per-service overrides and the supervisord file."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from libs.lab.plan import (
    SERVICES,
    LabSettings,
    etcd_program,
    free_ports,
    render_supervisord,
    service_overrides,
    service_programs,
)
from libs.watcher.diff import deep_merge

pytestmark = pytest.mark.unit


def test_deep_merge_recurses_and_overrides() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    assert deep_merge(base, {"a": {"c": 3}, "d": [2]}) == {"a": {"b": 1, "c": 3}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}  # input untouched


def test_free_ports_are_distinct() -> None:
    ports = free_ports().model_dump()
    assert len(set(ports.values())) == len(ports)


def test_endpoints_pair_up_between_services(tmp_path: Path) -> None:
    lab = LabSettings(lab_dir=tmp_path, ports=free_ports())
    o = service_overrides(lab)
    assert o["sniffer"]["output"]["endpoint"] == o["ml-detector"]["input"]["endpoint"]
    assert o["sniffer"]["output"]["bind"] and not o["ml-detector"]["input"]["bind"]
    assert o["ml-detector"]["firewall"]["endpoint"] == o["firewall"]["input"]["endpoint"]
    assert o["ml-detector"]["rag_logger"]["endpoint"] == o["rag-logger"]["input"]["endpoint"]
    metrics_ports = {o[s]["metrics"]["port"] for s in SERVICES}
    assert len(metrics_ports) == len(SERVICES)


def test_supervisord_conf_is_valid_ini_with_every_program(tmp_path: Path) -> None:
    lab = LabSettings(lab_dir=tmp_path / "lab dir")
    progs = [etcd_program(lab), *service_programs(lab)]
    text = render_supervisord(lab, progs)
    cp = configparser.RawConfigParser()
    cp.read_string(text)
    names = {s.split(":", 1)[1] for s in cp.sections() if s.startswith("program:")}
    assert names == {"etcd", *SERVICES}
    for name in names:
        sec = cp[f"program:{name}"]
        assert sec["autorestart"] == "true" and sec["stopasgroup"] == "true" and sec["killasgroup"] == "true"
    # paths with spaces are quoted so supervisord splits the command correctly
    assert '"' in cp["program:sniffer"]["command"]
    assert cp["unix_http_server"]["file"].endswith("supervisor.sock")


def test_default_mode_is_live_as_root_and_replay_for_captures(monkeypatch: pytest.MonkeyPatch) -> None:
    from libs.lab import cli

    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    assert cli.default_mode(None, ()) == "live"
    assert cli.default_mode(None, (Path("x.pcap"),)) == "replay"
    assert cli.default_mode("replay", ()) == "replay"
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.default_mode(None, ()) == "replay"
    assert cli.default_mode("live", ()) == "live"


def test_live_services_in_namespaces_reach_etcd_through_bridges(tmp_path: Path) -> None:
    """The sniffer and firewall run in namespaces with their own loopback: each of them gets the
    same --etcd / --config-events as the host's services, and a bridge listens on those ports
    inside its namespace."""
    from libs.lab import live

    lab = LabSettings(lab_dir=tmp_path / "lab")
    progs = {p.name: p for p in live.live_programs(lab)}
    for svc, ns in (("sniffer", live.NS_SWITCH), ("firewall", live.NS_VICTIM)):
        cmd = " ".join(progs[svc].command)
        assert f"--etcd {lab.etcd_url}" in cmd and "--config-events" in cmd
        for port in (lab.ports.etcd_client, lab.ports.rag_logger):
            assert any(
                ns in " ".join(p.command) and f"TCP-LISTEN:{port},bind=127.0.0.1" in " ".join(p.command)
                for p in progs.values()
            ), (svc, port)
