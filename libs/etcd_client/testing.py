"""An in-memory etcd with the EtcdClient interface, for unit tests of code that uses etcd.

Writes get increasing revisions and a history (so CAS, `history` and watch resume behave like etcd);
watch callbacks run synchronously in the writing thread, which keeps unit tests deterministic.
`set_down(True)` makes every call raise EtcdUnavailable until `set_down(False)`, when watches
resume and receive what they missed; `compact(rev)` makes older revisions unreadable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from libs.etcd_client.client import (
    DEFAULT_PREFIX,
    KeepAlive,
    KeyValue,
    StateCallback,
    WatchCallback,
    WatchEvent,
)
from libs.etcd_client.crypto import SecretKey, load_key
from libs.etcd_client.envelope import decode_value, encode_value
from libs.etcd_client.errors import CasConflict, EtcdError, EtcdUnavailable


@dataclass
class _Rec:
    revision: int
    kind: Literal["put", "delete"]
    key: str
    kv: KeyValue | None


@dataclass
class FakeWatch:
    """Same surface as client.Watch: `stop()`, `connected`, `next_revision`, `wait_created`."""

    store: FakeEtcd
    key: str
    callback: WatchCallback
    prefix: bool
    next_revision: int
    on_state: StateCallback | None
    connected: bool = True
    reconnects: int = 0
    resyncs: int = 0
    stopped: bool = False
    known: set[str] = field(default_factory=set)

    def matches(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    def wait_created(self, timeout: float) -> bool:
        return True

    def stop(self) -> None:
        self.stopped = True
        with self.store._lock:
            if self in self.store._watches:
                self.store._watches.remove(self)


class FakeEtcd:
    """In-memory stand-in for EtcdClient (see the module docstring)."""

    def __init__(
        self, prefix: str = DEFAULT_PREFIX, key_file: Path | str | None = None, timeout_s: float = 0.5
    ) -> None:
        self.endpoint = "fake://etcd"
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.secret: SecretKey | None = load_key(key_file) if key_file else None
        self.timeout_s = timeout_s
        self.down = False
        self.calls = 0
        self._rev = 1
        self._compacted = 0
        self._kvs: dict[str, KeyValue] = {}
        self._log: list[_Rec] = []
        self._leases: dict[int, int] = {}
        self._lease_keys: dict[int, set[str]] = {}
        self._next_lease = 1000
        self._watches: list[FakeWatch] = []
        self._lock = threading.RLock()

    # -- test controls ----------------------------------------------------------------------
    def set_down(self, down: bool) -> None:
        """Simulate an outage (True) or recovery (False: watches resume and catch up)."""
        self.down = down
        for w in list(self._watches):
            if w.on_state is not None and w.connected == down:
                w.connected = not down
                w.on_state(not down)
            w.connected = not down
        if not down:
            self._notify()

    def compact(self, revision: int | None = None) -> None:
        self._compacted = revision or self._rev

    def expire_lease(self, lease_id: int) -> None:
        with self._lock:
            self._leases.pop(lease_id, None)
            for key in sorted(self._lease_keys.pop(lease_id, set())):
                self._write("delete", key, None)
        self._notify()

    def raw_items(self) -> dict[str, bytes]:
        """Everything stored, by full key (what an attacker reading etcd would see)."""
        return {self.full_key(k): kv.raw for k, kv in self._kvs.items()}

    # -- EtcdClient interface ---------------------------------------------------------------
    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise EtcdUnavailable("etcd request failed: fake outage", self.endpoint, "wait for etcd")

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key.lstrip('/')}"

    def rel_key(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if full.startswith(self.prefix + "/") else full

    def health(self) -> bool:
        return not self.down

    def revision(self) -> int:
        self._check()
        return self._rev

    def get_kv(self, key: str, revision: int | None = None) -> KeyValue | None:
        self._check()
        with self._lock:
            if revision is None:
                return self._kvs.get(key)
            if revision < self._compacted:
                raise EtcdError("revision compacted", self.endpoint, "read a newer revision")
            found: KeyValue | None = None
            for rec in self._log:
                if rec.revision > revision:
                    break
                if rec.key == key:
                    found = rec.kv
            return found

    def get_range(self, key: str, prefix: bool = False) -> tuple[list[KeyValue], int]:
        self._check()
        with self._lock:
            kvs = [kv for k, kv in sorted(self._kvs.items()) if (k.startswith(key) if prefix else k == key)]
            return kvs, self._rev

    def get_prefix(self, key: str) -> list[KeyValue]:
        return self.get_range(key, prefix=True)[0]

    def decode(self, kv: KeyValue | WatchEvent) -> Any:
        return decode_value(self.full_key(kv.key), kv.raw or b"", self.secret)

    def get(self, key: str) -> Any:
        kv = self.get_kv(key)
        return None if kv is None else self.decode(kv)

    def history(self, key: str, limit: int = 10) -> list[KeyValue]:
        self._check()
        with self._lock:
            versions = [
                r.kv for r in self._log if r.key == key and r.kv is not None and r.revision >= self._compacted
            ]
        cur = self._kvs.get(key)
        if cur is None:
            return []
        versions = [v for v in versions if v.create_revision == cur.create_revision]
        return list(reversed(versions))[:limit]

    def encode(self, key: str, value: Any, encrypt: bool = False, compress: bool = False) -> bytes:
        return encode_value(self.full_key(key), value, encrypt=encrypt, compress=compress, secret=self.secret)

    def _write(self, kind: Literal["put", "delete"], key: str, raw: bytes | None, lease: int = 0) -> int:
        self._rev += 1
        kv: KeyValue | None = None
        if kind == "put":
            old = self._kvs.get(key)
            kv = KeyValue(
                key=key,
                raw=raw or b"",
                mod_revision=self._rev,
                create_revision=old.create_revision if old else self._rev,
                version=(old.version + 1) if old else 1,
                lease=lease,
            )
            self._kvs[key] = kv
            if lease:
                self._lease_keys.setdefault(lease, set()).add(key)
        else:
            self._kvs.pop(key, None)
        self._log.append(_Rec(self._rev, kind, key, kv))
        return self._rev

    def _notify(self) -> None:
        if self.down:
            return
        for w in list(self._watches):
            with self._lock:
                pending = [r for r in self._log if r.revision >= w.next_revision and w.matches(r.key)]
                oldest_ok = w.next_revision >= self._compacted
            if not oldest_ok:
                w.resyncs += 1
                kvs, rev = self.get_range(w.key, w.prefix)
                for kv in kvs:
                    w.callback(WatchEvent("put", kv.key, kv.raw, kv.mod_revision, resync=True))
                w.next_revision = rev + 1
                continue
            for r in pending:
                if w.stopped:
                    break
                w.next_revision = r.revision + 1
                w.callback(WatchEvent(r.kind, r.key, r.kv.raw if r.kv else None, r.revision))
            with self._lock:
                w.next_revision = max(w.next_revision, self._rev + 1)

    def put_raw(self, key: str, raw: bytes, lease: int = 0) -> int:
        self._check()
        with self._lock:
            if lease and lease not in self._leases:
                raise EtcdError("requested lease not found", self.endpoint, "grant a new lease")
            rev = self._write("put", key, raw, lease)
        self._notify()
        return rev

    def set(self, key: str, value: Any, encrypt: bool = False, compress: bool = False, lease: int = 0) -> int:
        return self.put_raw(key, self.encode(key, value, encrypt, compress), lease)

    def cas(
        self, key: str, value: Any, mod_revision: int, encrypt: bool = False, compress: bool = False
    ) -> int:
        self._check()
        raw = self.encode(key, value, encrypt, compress)
        with self._lock:
            cur = self._kvs.get(key)
            if (cur.mod_revision if cur else 0) != mod_revision:
                raise CasConflict(
                    f"changed since it was read (expected mod revision {mod_revision}, "
                    f"now {cur.mod_revision if cur else 'absent'})",
                    self.full_key(key),
                    "read it again and re-apply your edit",
                )
            rev = self._write("put", key, raw)
        self._notify()
        return rev

    def delete(self, key: str, prefix: bool = False) -> bool:
        self._check()
        with self._lock:
            keys = [k for k in sorted(self._kvs) if (k.startswith(key) if prefix else k == key)]
            for k in keys:
                self._write("delete", k, None)
        self._notify()
        return bool(keys)

    def lease_grant(self, ttl_s: int) -> int:
        self._check()
        with self._lock:
            self._next_lease += 1
            self._leases[self._next_lease] = ttl_s
            return self._next_lease

    def lease_keepalive(self, lease_id: int) -> int:
        self._check()
        return self._leases.get(lease_id, -1)

    def lease_revoke(self, lease_id: int) -> None:
        self._check()
        self.expire_lease(lease_id)

    def keep_alive(self, key: str, value_fn: Callable[[], Any], ttl_s: int = 10) -> KeepAlive:
        return KeepAlive(self, key, value_fn, ttl_s)  # type: ignore[arg-type]

    def watch(
        self,
        key: str,
        callback: WatchCallback,
        *,
        prefix: bool = False,
        start_revision: int | None = None,
        on_state: StateCallback | None = None,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> FakeWatch:
        self._check()
        w = FakeWatch(self, key, callback, prefix, start_revision or self._rev + 1, on_state)
        with self._lock:
            self._watches.append(w)
        if on_state is not None:
            on_state(True)
        self._notify()
        return w

    def close(self) -> None:
        pass
