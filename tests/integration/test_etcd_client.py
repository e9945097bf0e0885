"""EtcdClient on a real etcd: CAS, leases, a watch that survives restarts and compaction, sealed values."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from fixtures.etcd import EtcdServer

from helpers import wait_for
from libs.etcd_client import CasConflict, EtcdClient, WatchEvent
from libs.etcd_client.crypto import generate_key

pytestmark = pytest.mark.integration


def test_cas_history_and_heartbeat_lease(etcd_server: EtcdServer) -> None:
    c = EtcdClient(etcd_server.url)
    r1 = c.cas("config/x", {"v": 1}, 0)
    with pytest.raises(CasConflict, match="expected mod revision 0"):
        c.cas("config/x", {"v": 9}, 0)
    c.cas("config/x", {"v": 2}, r1)
    assert [c.decode(kv) for kv in c.history("config/x")] == [{"v": 2}, {"v": 1}]
    hb = c.keep_alive("nodes/n1/demo", lambda: {"pid": os.getpid()}, ttl_s=2)
    try:
        wait_for(lambda: c.get("nodes/n1/demo") == {"pid": os.getpid()}, 5, what="heartbeat key")
        kv = c.get_kv("nodes/n1/demo")
        assert kv is not None and kv.lease > 0
        assert '"pid"' in etcd_server.ctl("get", "/ml-defender/v1/nodes/n1/demo")
    finally:
        hb.stop(revoke=False)
    # without refreshes the 2 s lease expires and etcd removes the key by itself
    wait_for(lambda: c.get("nodes/n1/demo") is None, 8, what="lease expiry")


def test_watch_resumes_after_etcd_restart_and_resyncs_after_compaction(etcd_server: EtcdServer) -> None:
    c = EtcdClient(etcd_server.url, timeout_s=1.0)
    seen: list[WatchEvent] = []
    lock = threading.Lock()

    def on_event(ev: WatchEvent) -> None:
        with lock:
            seen.append(ev)

    w = c.watch("config/", on_event, prefix=True, backoff_max_s=0.5)
    try:
        assert w.wait_created(5)
        c.set("config/a", 1)
        wait_for(lambda: len(seen) == 1, 5, what="first event")
        etcd_server.kill()
        wait_for(lambda: not w.connected, 5, what="watch noticing the outage")
        etcd_server.start()
        c.set("config/a", 2)
        wait_for(lambda: any(e.raw == b"2" for e in seen), 10, what="event after restart")
        assert w.reconnects >= 1
    finally:
        w.stop()
    # a watch resuming from a compacted revision re-reads the current value instead of missing it
    resume_at = w.next_revision
    for i in range(3, 6):
        c.set("config/a", i)
    etcd_server.ctl("compact", str(c.revision()))
    seen.clear()
    w2 = c.watch("config/", on_event, prefix=True, start_revision=resume_at)
    try:
        wait_for(lambda: any(e.raw == b"5" and e.resync for e in seen), 5, what="resync after compaction")
        c.set("config/a", 6)
        wait_for(lambda: seen[-1].raw == b"6" and not seen[-1].resync, 5, what="live event after resync")
    finally:
        w2.stop()


def test_sealed_values_never_reach_etcd_in_clear(etcd_server: EtcdServer, tmp_path: Path) -> None:
    key = generate_key(tmp_path / "cfg.key")
    c = EtcdClient(etcd_server.url, key_file=tmp_path / "cfg.key")
    marker = "plaintext-marker-7f3a"
    doc = {"rules": [{"name": marker, "window_s": 10}] * 50}
    c.set("config/secret", doc, encrypt=True, compress=True)
    assert c.get("config/secret") == doc
    stored = etcd_server.ctl("get", "/ml-defender/v1/config/secret", "--print-value-only")
    assert '"encryption":"chacha20-poly1305"' in stored.replace(" ", "") and marker not in stored
    etcd_server.ctl("snapshot", "save", str(tmp_path / "snap.db"))
    blobs = [p.read_bytes() for p in etcd_server.data_dir.rglob("*") if p.is_file()]
    blobs.append((tmp_path / "snap.db").read_bytes())
    for blob in blobs:
        assert marker.encode() not in blob
        assert key.material not in blob and key.material.hex().encode() not in blob
    other = EtcdClient(etcd_server.url)  # no key: refuses instead of guessing
    with pytest.raises(Exception, match="no key file"):
        other.get("config/secret")


def test_unreachable_etcd_is_a_clear_error() -> None:
    from libs.etcd_client.errors import EtcdUnavailable

    c = EtcdClient("http://127.0.0.1:1", timeout_s=0.5)  # nothing listens on port 1
    assert not c.health()
    with pytest.raises(EtcdUnavailable, match="fix: check that etcd runs"):
        c.get("config/x")


def test_watch_recovers_when_etcd_comes_back_with_an_empty_store(etcd_server: EtcdServer) -> None:
    import shutil

    c = EtcdClient(etcd_server.url, timeout_s=1.0)
    seen: list[WatchEvent] = []
    for i in range(5):
        c.set("config/a", i)
    w = c.watch("config/", seen.append, prefix=True, backoff_max_s=0.3)
    try:
        assert w.wait_created(5)
        etcd_server.kill()
        shutil.rmtree(etcd_server.data_dir)  # a wiped or restored etcd: revisions start over
        etcd_server.start()
        c.set("config/a", "fresh")  # revision 2 of the new store: below where the watch was
        wait_for(lambda: any(e.raw == b'"fresh"' for e in seen), 10, what="event from the new store")
    finally:
        w.stop()
