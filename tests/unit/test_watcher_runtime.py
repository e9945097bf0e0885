"""ConfigRuntime on the in-memory etcd: apply, reject, roll back, cache, offline start, node overrides."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from helpers import wait_for
from libs.common.settings import ServiceSettings
from libs.etcd_client.crypto import generate_key
from libs.etcd_client.testing import FakeEtcd
from libs.watcher import ConfigRuntime
from ml_defender.v1 import config_pb2

pytestmark = pytest.mark.unit
SERVICE = "demo"
KEY = f"config/{SERVICE}"


class Thresholds(BaseModel, extra="forbid", frozen=True):
    drop: float = Field(0.7, ge=0.0, le=1.0)
    alert: float = Field(0.5, ge=0.0, le=1.0)


class DemoSettings(ServiceSettings, frozen=True):
    thresholds: Thresholds = Thresholds()
    allow: list[str] = []
    endpoint: str = "tcp://127.0.0.1:5571"


HOT = ("thresholds", "allow")


def make(fake: FakeEtcd, tmp_path: Path, **kw: Any) -> ConfigRuntime[DemoSettings]:
    events: list[config_pb2.ConfigChange] = []
    rt = ConfigRuntime(
        SERVICE,
        DemoSettings,
        initial=DemoSettings(node_id="n1"),
        hot_fields=HOT,
        client=fake,
        cache_dir=tmp_path / "cache",
        emit=events.append,
        **kw,
    )
    rt.events = events  # type: ignore[attr-defined]
    return rt


def status(fake: FakeEtcd) -> dict[str, Any]:
    value = fake.get(f"status/n1/{SERVICE}/config")
    assert isinstance(value, dict)
    return value


def test_boot_takes_every_field_then_only_hot_fields_apply(tmp_path: Path) -> None:
    fake = FakeEtcd()
    fake.set(KEY, {"thresholds": {"drop": 0.8}, "endpoint": "tcp://127.0.0.1:6000"})
    rt = make(fake, tmp_path)
    try:
        cur = rt.start()
        assert cur.thresholds.drop == 0.8 and cur.endpoint == "tcp://127.0.0.1:6000" and rt.source == "etcd"
        assert fake.get(f"nodes/n1/{SERVICE}")["config_revision"] == rt.revision
        rev = fake.set(
            KEY, {"thresholds": {"drop": 0.6}, "endpoint": "tcp://127.0.0.1:7000", "allow": ["::1"]}
        )
        assert rt.revision == rev
        assert rt.current.thresholds.drop == 0.6 and rt.current.allow == ["::1"]
        assert rt.current.endpoint == "tcp://127.0.0.1:6000"  # restart-required: reported, not applied
        assert rt.pending_restart == ("endpoint",)
        st = status(fake)
        assert st["result"] == "APPLIED" and st["revision"] == rev and st["pending_restart"] == ["endpoint"]
        change = rt.events[-1]  # type: ignore[attr-defined]
        assert change.result == config_pb2.CONFIG_RESULT_APPLIED and change.new_revision == rev
        assert {(d.path, d.hot) for d in change.diff} == {
            ("thresholds.drop", True),
            ("allow", True),
            ("endpoint", False),
        }
        assert rt.metrics.revision._value.get() == rev
    finally:
        rt.stop()
    assert fake.get(f"nodes/n1/{SERVICE}") is None  # lease revoked on stop


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"thresholds": {"drop": "high"}}', "thresholds.drop: Input should be a valid number"),
        (b'{"thresholds": {"drop": 0.5}, "colour": "red"}', "colour: Extra inputs are not permitted"),
        (b'{"thresholds": {"drop": 1.5}}', "thresholds.drop: Input should be less than or equal to 1"),
        (b'{"thresholds": ', "value is not JSON"),
        (b"[1, 2]", "settings must be a JSON object"),
    ],
)
def test_invalid_documents_are_rejected_and_old_values_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, raw: bytes, reason: str
) -> None:
    fake = FakeEtcd()
    good = fake.set(KEY, {"thresholds": {"drop": 0.8}})
    rt = make(fake, tmp_path)
    try:
        rt.start()
        with caplog.at_level(logging.ERROR):
            bad = fake.put_raw(KEY, raw)
        assert rt.current.thresholds.drop == 0.8 and rt.revision == good
        st = status(fake)
        assert st["result"] == "REJECTED" and reason in st["error"] and st["document_revision"] == bad
        assert any(reason in r.getMessage() for r in caplog.records)
        assert rt.events[-1].result == config_pb2.CONFIG_RESULT_REJECTED  # type: ignore[attr-defined]
        fake.set(KEY, {"thresholds": {"drop": 0.65}})  # and it keeps working
        assert rt.current.thresholds.drop == 0.65
    finally:
        rt.stop()


def test_wrong_encryption_key_is_rejected(tmp_path: Path) -> None:
    writer = FakeEtcd(key_file=generate_key(tmp_path / "w.key") and tmp_path / "w.key")
    generate_key(tmp_path / "r.key")
    rt = make(writer, tmp_path)
    try:
        rt.start()
        writer.set(KEY, {"thresholds": {"drop": 0.9}}, encrypt=True, compress=True)
        assert rt.current.thresholds.drop == 0.9  # same key: applied
        writer.secret = FakeEtcd(key_file=tmp_path / "r.key").secret  # reader now holds another key
        writer.put_raw(KEY, writer.get_kv(KEY).raw)  # type: ignore[union-attr]
        assert "wrong key" in status(writer)["error"] and rt.current.thresholds.drop == 0.9
    finally:
        rt.stop()


def test_failing_apply_step_rolls_back(tmp_path: Path) -> None:
    fake = FakeEtcd()
    calls: list[tuple[float, float]] = []

    def record(old: DemoSettings, new: DemoSettings) -> None:
        calls.append((old.thresholds.drop, new.thresholds.drop))

    def explode(old: DemoSettings, new: DemoSettings) -> None:
        if new.thresholds.drop < 0.2:
            raise RuntimeError("device refused")

    rt = make(fake, tmp_path, on_apply=[record, explode])
    try:
        rt.start()
        fake.set(KEY, {"thresholds": {"drop": 0.1}})
        assert rt.current.thresholds.drop == 0.7
        assert calls == [(0.7, 0.1), (0.1, 0.7)]  # applied, then undone
        assert status(fake)["result"] == "ROLLED_BACK" and "device refused" in status(fake)["error"]
        assert rt.events[-1].result == config_pb2.CONFIG_RESULT_ROLLED_BACK  # type: ignore[attr-defined]
    finally:
        rt.stop()


def test_node_override_merges_over_the_service_document(tmp_path: Path) -> None:
    fake = FakeEtcd()
    fake.set(KEY, {"thresholds": {"drop": 0.8, "alert": 0.4}})
    rt = make(fake, tmp_path)
    try:
        rt.start()
        fake.set(f"{KEY}/nodes/n1", {"thresholds": {"drop": 0.75}})
        fake.set(f"{KEY}/nodes/other", {"thresholds": {"drop": 0.1}})  # another node's: ignored
        assert rt.current.thresholds == Thresholds(drop=0.75, alert=0.4)
        fake.delete(f"{KEY}/nodes/n1")
        assert rt.current.thresholds.drop == 0.8
    finally:
        rt.stop()


def test_offline_start_uses_cache_then_picks_etcd_up(tmp_path: Path) -> None:
    fake = FakeEtcd()
    fake.set(KEY, {"thresholds": {"drop": 0.55}, "endpoint": "tcp://127.0.0.1:6001"})
    first = make(fake, tmp_path)
    first.start()
    first.stop()
    cache = json.loads(first.cache_path.read_text())
    assert cache["document"]["thresholds"]["drop"] == 0.55
    fake.set_down(True)
    second = make(fake, tmp_path)
    try:
        cur = second.start()
        assert (
            second.source == "cache"
            and cur.thresholds.drop == 0.55
            and cur.endpoint == "tcp://127.0.0.1:6001"
        )
        assert second.metrics.source.labels("cache")._value.get() == 1
        fake.down = False
        fake.set(KEY, {"thresholds": {"drop": 0.45}, "endpoint": "tcp://127.0.0.1:6001"})  # edited meanwhile
        wait_for(lambda: second.current.thresholds.drop == 0.45, 5, what="pick-up of etcd after it came back")
        assert second.source == "etcd"
    finally:
        second.stop()


def test_offline_start_without_cache_uses_defaults(tmp_path: Path) -> None:
    fake = FakeEtcd()
    fake.set_down(True)
    rt = make(fake, tmp_path, source="defaults")
    try:
        assert rt.start().thresholds.drop == 0.7 and rt.source == "defaults"
    finally:
        rt.stop()


def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    fake = FakeEtcd()
    rt = make(fake, tmp_path)
    rt.cache_path.parent.mkdir(parents=True)
    rt.cache_path.write_text('{"document": {"thresholds": {"drop": 7}}}')
    fake.set_down(True)
    try:
        assert rt.start().thresholds.drop == 0.7 and rt.source != "cache"
    finally:
        rt.stop()
    assert os.path.exists(rt.cache_path)


class Model(BaseModel, extra="forbid", frozen=True):
    path: str
    enabled: bool = True


class WithDict(ServiceSettings, frozen=True):
    models: dict[str, Model] = Field(default_factory=lambda: {"ddos": Model(path="ddos/model.txt")})
    interface: str = "eth0"


def test_partial_documents_merge_into_dict_fields_and_flags_win(tmp_path: Path) -> None:
    fake = FakeEtcd()
    fake.set("config/dicty", {"models": {"ddos": {"enabled": False}}, "interface": "eth9"})
    rt = ConfigRuntime(
        "dicty",
        WithDict,
        initial=WithDict(node_id="n1"),
        hot_fields=("models.*",),
        client=fake,
        cache_dir=tmp_path,
        overrides={"interface": "veth-lab"},
    )
    try:
        cur = rt.start()
        assert cur.models["ddos"] == Model(path="ddos/model.txt", enabled=False)
        assert cur.interface == "veth-lab"  # the command line beats etcd
        fake.set("config/dicty", {"models": {"ddos": {"enabled": True}}, "interface": "eth7"})
        assert rt.current.models["ddos"].enabled and rt.pending_restart == ()
    finally:
        rt.stop()
