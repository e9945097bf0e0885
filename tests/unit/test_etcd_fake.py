"""The in-memory FakeEtcd behaves like the real client where callers depend on it."""

from __future__ import annotations

import pytest

from libs.etcd_client.errors import CasConflict, EtcdUnavailable
from libs.etcd_client.testing import FakeEtcd

pytestmark = pytest.mark.unit


def test_set_get_cas_history_delete() -> None:
    e = FakeEtcd()
    r1 = e.set("config/a", {"x": 1})
    assert e.get("config/a") == {"x": 1}
    kv = e.get_kv("config/a")
    assert kv is not None and kv.mod_revision == r1
    r2 = e.cas("config/a", {"x": 2}, r1)
    with pytest.raises(CasConflict, match="expected mod revision"):
        e.cas("config/a", {"x": 3}, r1)
    with pytest.raises(CasConflict):
        e.cas("config/a", {"x": 3}, 0)  # 0: only when absent
    assert [e.decode(v) for v in e.history("config/a")] == [{"x": 2}, {"x": 1}]
    assert e.get_kv("config/a", revision=r1) is not None
    assert e.get("config/a") == {"x": 2} and r2 > r1
    assert e.delete("config/a") and e.get("config/a") is None


def test_watch_resumes_after_outage_and_resyncs_after_compaction() -> None:
    e = FakeEtcd()
    seen: list[tuple[str, str, object]] = []
    states: list[bool] = []
    w = e.watch(
        "config/", lambda ev: seen.append((ev.kind, ev.key, ev.raw)), prefix=True, on_state=states.append
    )
    e.set("config/a", 1)
    e.set_down(True)
    with pytest.raises(EtcdUnavailable):
        e.set("config/b", 2)
    e.down = False
    e.set("config/b", 2)  # written while the watch was marked down
    e.down = True
    e.set_down(False)
    assert seen == [("put", "config/a", b"1"), ("put", "config/b", b"2")]
    assert states == [True, False, True]
    w.stop()
    start = e.revision()  # older than the compaction point below
    e.set("config/a", 5)
    e.compact()
    seen.clear()
    w2 = e.watch(
        "config/", lambda ev: seen.append((ev.kind, ev.key, ev.raw)), prefix=True, start_revision=start
    )
    assert ("put", "config/a", b"5") in seen and w2.resyncs == 1
