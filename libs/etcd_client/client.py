"""etcd v3 through its JSON gateway (etcd3gw), with envelopes, CAS, leases and a resuming watch.

etcd3gw is a thin HTTP client: requests to `/v3/kv/...` with base64 keys and values. We pin the
API path to `/v3/` (etcd >= 3.4) instead of letting etcd3gw probe `/version` on first use, so the
first request after an outage is the real one. etcd3gw's own watcher ignores compaction and stream
ends, so the watch here is our own loop over the gateway's streaming `/v3/watch`: it remembers the
last revision it delivered, resumes from the next one after any reconnect, and when etcd says that
revision was compacted it re-reads the key (or prefix) and delivers the current values instead —
no update is missed, at worst an intermediate one is skipped in favour of the newest.

Keys given to this client are relative to `prefix` (default `/ml-defender/v1`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception
from pydantic import BaseModel

from libs.common.errors import ConfigError
from libs.common.settings import validate_settings
from libs.etcd_client.crypto import SecretKey, load_key
from libs.etcd_client.envelope import decode_value, encode_value
from libs.etcd_client.errors import CasConflict, EtcdError, EtcdUnavailable

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/ml-defender/v1"


@dataclass(frozen=True)
class KeyValue:
    """One stored key: `key` is relative to the client's prefix, `raw` the stored bytes."""

    key: str
    raw: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    """A change seen by a watch; `resync` marks values re-read after a compaction or resume gap."""

    kind: Literal["put", "delete"]
    key: str
    raw: bytes | None
    mod_revision: int
    resync: bool = False


WatchCallback = Callable[[WatchEvent], None]
StateCallback = Callable[[bool], None]


def validate_schema(model: type[M], value: Any, where: str = "value") -> M:
    """Validate a decoded value against a pydantic model; ConfigError lists every bad field."""
    return validate_settings(model, value, where)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def _next_key(data: bytes) -> bytes:
    """The first key after every key that starts with `data` (etcd's prefix range_end)."""
    b = bytearray(data)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


def parse_endpoint(endpoint: str) -> tuple[str, str, int]:
    """`http://host:port` -> (scheme, host, port), with a ConfigError that says what is wrong."""
    parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"bad etcd endpoint {endpoint!r}",
            "etcd.endpoint",
            "use http://HOST:PORT, e.g. http://127.0.0.1:2379",
        )
    try:
        port = parts.port or 2379
    except ValueError:
        raise ConfigError(
            f"bad port in etcd endpoint {endpoint!r}", "etcd.endpoint", "use a port 1-65535"
        ) from None
    return parts.scheme, parts.hostname, port


class EtcdClient:
    """get / set / delete / CAS / history / leases / watch on one etcd endpoint, values as JSON."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        prefix: str = DEFAULT_PREFIX,
        key_file: Path | str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.endpoint = endpoint
        scheme, host, port = parse_endpoint(endpoint)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.secret: SecretKey | None = load_key(key_file) if key_file else None
        self.timeout_s = timeout_s
        self._gw = Etcd3Client(host=host, port=port, protocol=scheme, timeout=timeout_s, api_path="/v3/")
        self._lock = threading.Lock()  # requests.Session is not guaranteed thread-safe

    # -- keys -------------------------------------------------------------------------------
    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key.lstrip('/')}"

    def rel_key(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if full.startswith(self.prefix + "/") else full

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            with self._lock:
                result: dict[str, Any] = self._gw.post(self._gw.get_url(path), json=payload)
        except Etcd3Exception as exc:
            detail = (exc.detail_text or str(exc) or type(exc).__name__)[:300]
            if "compacted" in detail:
                raise EtcdError(
                    f"revision compacted: {detail}", self.endpoint, "read a newer revision"
                ) from None
            raise EtcdUnavailable(
                f"etcd request {path} failed: {detail}",
                self.endpoint,
                "check that etcd runs and the endpoint is right",
            ) from None
        return result

    @staticmethod
    def _revision(result: dict[str, Any]) -> int:
        return int(result.get("header", {}).get("revision", 0))

    def _kv(self, item: dict[str, Any]) -> KeyValue:
        return KeyValue(
            key=self.rel_key(_unb64(item["key"]).decode(errors="replace")),
            raw=_unb64(item.get("value", "")),
            mod_revision=int(item.get("mod_revision", 0)),
            create_revision=int(item.get("create_revision", 0)),
            version=int(item.get("version", 0)),
            lease=int(item.get("lease", 0)),
        )

    # -- reads ------------------------------------------------------------------------------
    def health(self) -> bool:
        """True when etcd answers a read (cheap; used to decide when to reconnect)."""
        try:
            self.revision()
        except EtcdUnavailable:
            return False
        return True

    def revision(self) -> int:
        """The store's current revision."""
        return self._revision(self._post("kv/range", {"key": _b64(b"\0"), "limit": 1, "keys_only": True}))

    def get_kv(self, key: str, revision: int | None = None) -> KeyValue | None:
        payload: dict[str, Any] = {"key": _b64(self.full_key(key).encode())}
        if revision is not None:
            payload["revision"] = revision
        kvs = self._post("kv/range", payload).get("kvs", [])
        return self._kv(kvs[0]) if kvs else None

    def get_range(self, key: str, prefix: bool = False) -> tuple[list[KeyValue], int]:
        """The key (or every key under the prefix) and the store revision of the read."""
        full = self.full_key(key).encode()
        payload: dict[str, Any] = {"key": _b64(full)}
        if prefix:
            payload["range_end"] = _b64(_next_key(full))
        result = self._post("kv/range", payload)
        return [self._kv(i) for i in result.get("kvs", [])], self._revision(result)

    def get_prefix(self, key: str) -> list[KeyValue]:
        return self.get_range(key, prefix=True)[0]

    def decode(self, kv: KeyValue | WatchEvent) -> Any:
        """The JSON value of a stored key (EnvelopeError when it cannot be decoded)."""
        return decode_value(self.full_key(kv.key), kv.raw or b"", self.secret)

    def get(self, key: str) -> Any:
        """The decoded value at `key`, or None when absent."""
        kv = self.get_kv(key)
        return None if kv is None else self.decode(kv)

    def history(self, key: str, limit: int = 10) -> list[KeyValue]:
        """Past versions of a key, newest first, until `limit`, its creation or the compaction point."""
        out: list[KeyValue] = []
        kv = self.get_kv(key)
        while kv is not None and len(out) < limit:
            out.append(kv)
            if kv.version <= 1 or kv.mod_revision <= 1:
                break
            try:
                kv = self.get_kv(key, revision=kv.mod_revision - 1)
            except EtcdError as exc:
                if "compacted" in exc.what:
                    break
                raise
        return out

    # -- writes -----------------------------------------------------------------------------
    def encode(self, key: str, value: Any, encrypt: bool = False, compress: bool = False) -> bytes:
        return encode_value(self.full_key(key), value, encrypt=encrypt, compress=compress, secret=self.secret)

    def put_raw(self, key: str, raw: bytes, lease: int = 0) -> int:
        payload: dict[str, Any] = {"key": _b64(self.full_key(key).encode()), "value": _b64(raw)}
        if lease:
            payload["lease"] = lease
        return self._revision(self._post("kv/put", payload))

    def set(self, key: str, value: Any, encrypt: bool = False, compress: bool = False, lease: int = 0) -> int:
        """Store `value` as JSON (optionally compressed/encrypted); returns the new revision."""
        return self.put_raw(key, self.encode(key, value, encrypt, compress), lease)

    def cas(
        self, key: str, value: Any, mod_revision: int, encrypt: bool = False, compress: bool = False
    ) -> int:
        """Store only if the key's mod revision is still `mod_revision` (0: only if absent)."""
        full = _b64(self.full_key(key).encode())
        txn = {
            "compare": [{"key": full, "result": "EQUAL", "target": "MOD", "mod_revision": mod_revision}],
            "success": [
                {"request_put": {"key": full, "value": _b64(self.encode(key, value, encrypt, compress))}}
            ],
            "failure": [],
        }
        result = self._post("kv/txn", txn)
        if not result.get("succeeded"):
            current = self.get_kv(key)
            raise CasConflict(
                f"changed since it was read (expected mod revision {mod_revision}, "
                f"now {current.mod_revision if current else 'absent'})",
                self.full_key(key),
                "read it again and re-apply your edit",
            )
        return self._revision(result)

    def delete(self, key: str, prefix: bool = False) -> bool:
        full = self.full_key(key).encode()
        payload: dict[str, Any] = {"key": _b64(full)}
        if prefix:
            payload["range_end"] = _b64(_next_key(full))
        return int(self._post("kv/deleterange", payload).get("deleted", 0)) > 0

    # -- leases -----------------------------------------------------------------------------
    def lease_grant(self, ttl_s: int) -> int:
        return int(self._post("lease/grant", {"TTL": ttl_s, "ID": 0})["ID"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease; returns its TTL, or -1 when it already expired."""
        result = self._post("lease/keepalive", {"ID": lease_id})
        return int(result.get("result", {}).get("TTL", -1))

    def lease_revoke(self, lease_id: int) -> None:
        self._post("kv/lease/revoke", {"ID": lease_id})

    def keep_alive(self, key: str, value_fn: Callable[[], Any], ttl_s: int = 10) -> KeepAlive:
        """Keep `key` present under a lease of `ttl_s`, refreshed every ttl/3; re-created after an outage."""
        return KeepAlive(self, key, value_fn, ttl_s)

    # -- watch ------------------------------------------------------------------------------
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
    ) -> Watch:
        """Call `callback` for every change of `key` (or under it) from `start_revision` on, in a thread."""
        return Watch(
            self,
            key,
            callback,
            prefix,
            start_revision,
            on_state,
            backoff_initial_s,
            backoff_max_s,
            read_timeout_s,
        )

    def close(self) -> None:
        self._gw.session.close()


class KeepAlive:
    """A leased key refreshed in a thread (node heartbeats): present while the process lives."""

    def __init__(self, client: EtcdClient, key: str, value_fn: Callable[[], Any], ttl_s: int) -> None:
        self.client, self.key, self.value_fn, self.ttl_s = client, key, value_fn, ttl_s
        self.lease_id = 0
        self.alive = False
        self._stop = threading.Event()
        self._kick = threading.Event()
        try:  # first beat inline: the key exists when the caller continues (etcd permitting)
            self._beat()
            self.alive = True
        except EtcdError:
            pass
        self._thread = threading.Thread(target=self._run, name=f"keepalive:{key}", daemon=True)
        self._thread.start()

    def refresh_value(self) -> None:
        """Rewrite the value now (e.g. after a config change) instead of at the next beat."""
        self._kick.set()

    def _beat(self) -> None:
        if self.lease_id and self.client.lease_keepalive(self.lease_id) > 0:
            if self._kick.is_set():
                self._kick.clear()
                self.client.set(self.key, self.value_fn(), lease=self.lease_id)
            return
        self.lease_id = self.client.lease_grant(self.ttl_s)
        self._kick.clear()
        self.client.set(self.key, self.value_fn(), lease=self.lease_id)

    def _run(self) -> None:
        interval = max(self.ttl_s / 3.0, 0.2)
        backoff = 0.2
        first = True
        while not self._stop.is_set():
            if first and self.alive:
                first = False
                self._kick.wait(interval)
                continue
            try:
                self._beat()
                self.alive = True
                backoff = 0.2
                wait = interval
            except EtcdError as exc:
                if self.alive:
                    log.warning("heartbeat %s lost: %s", self.key, exc.what)
                self.alive = False
                wait = backoff
                backoff = min(backoff * 2, interval)
            self._kick.wait(wait)
            if self._stop.is_set():
                break

    def stop(self, revoke: bool = True) -> None:
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout=self.client.timeout_s + 1)
        if revoke and self.lease_id:
            with contextlib.suppress(EtcdError):
                self.client.lease_revoke(self.lease_id)


def _abort_stream(resp: requests.Response) -> None:
    """Unblock a thread reading a streaming response by shutting the socket down under it."""
    try:
        fp = resp.raw._fp  # http.client.HTTPResponse
        sock = socket.fromfd(fp.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    except Exception:
        pass
    with contextlib.suppress(Exception):
        resp.close()


class Watch:
    """One resuming watch (see the module docstring); `stop()` ends it."""

    def __init__(
        self,
        client: EtcdClient,
        key: str,
        callback: WatchCallback,
        prefix: bool,
        start_revision: int | None,
        on_state: StateCallback | None,
        backoff_initial_s: float,
        backoff_max_s: float,
        read_timeout_s: float,
    ) -> None:
        self.client = client
        self.key = key
        self.prefix = prefix
        self.callback = callback
        self.on_state = on_state
        self.next_revision = start_revision
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.read_timeout_s = read_timeout_s
        self.connected = False
        self.reconnects = 0
        self.resyncs = 0
        self._known: set[str] = set()
        self._stop = threading.Event()
        self._resp: requests.Response | None = None
        self._session = requests.Session()
        self._created = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch:{key}", daemon=True)
        self._thread.start()

    def wait_created(self, timeout: float) -> bool:
        """True once the watch is registered with etcd (events after this point are delivered)."""
        return self._created.wait(timeout)

    def _set_state(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            if self.on_state is not None:
                try:
                    self.on_state(up)
                except Exception:
                    log.exception("watch state callback failed")

    def _deliver(self, ev: WatchEvent) -> None:
        if ev.kind == "put":
            self._known.add(ev.key)
        else:
            self._known.discard(ev.key)
        try:
            self.callback(ev)
        except Exception:
            log.exception("watch callback failed", extra={"key": ev.key, "revision": ev.mod_revision})

    def _resync(self) -> None:
        """After a compaction: deliver the current values (and deletions of keys that vanished)."""
        kvs, rev = self.client.get_range(self.key, self.prefix)
        self.resyncs += 1
        present = {kv.key for kv in kvs}
        for gone in sorted(self._known - present):
            self._deliver(WatchEvent("delete", gone, None, rev, resync=True))
        for kv in kvs:
            self._deliver(WatchEvent("put", kv.key, kv.raw, kv.mod_revision, resync=True))
        self.next_revision = rev + 1

    def _request(self) -> dict[str, Any]:
        full = self.client.full_key(self.key).encode()
        create: dict[str, Any] = {"key": _b64(full), "progress_notify": True}
        if self.prefix:
            create["range_end"] = _b64(_next_key(full))
        if self.next_revision is not None:
            create["start_revision"] = self.next_revision
        return {"create_request": create}

    def _handle(self, msg: dict[str, Any]) -> bool:
        """Process one gateway message; False when the stream must be re-created."""
        if "error" in msg:
            raise EtcdUnavailable(
                f"watch stream error: {msg['error']}", self.client.endpoint, "etcd restarting?"
            )
        result = msg.get("result", {})
        header_rev = int(result.get("header", {}).get("revision", 0))
        if int(result.get("compact_revision", 0) or 0) > 0:
            log.warning(
                "watch %s: revision %s compacted (oldest kept %s); re-reading current values",
                self.key,
                self.next_revision,
                result["compact_revision"],
            )
            self._resync()
            return False
        if result.get("canceled"):
            raise EtcdUnavailable(
                f"watch canceled by etcd: {result.get('cancel_reason', '')}",
                self.client.endpoint,
                "will retry",
            )
        if result.get("created"):
            if self.next_revision is None:
                self.next_revision = header_rev + 1
            elif 0 < header_rev < self.next_revision - 1:
                # the store is older than what we saw: etcd was restored or wiped; start over from it
                log.warning(
                    "watch %s: etcd revision went back from %s to %s (store reset?); re-reading",
                    self.key,
                    self.next_revision - 1,
                    header_rev,
                )
                self._resync()
                return False
            self._created.set()
        for raw_ev in result.get("events", []):
            kv = self.client._kv(raw_ev["kv"])
            kind: Literal["put", "delete"] = "delete" if raw_ev.get("type") == "DELETE" else "put"
            self._deliver(WatchEvent(kind, kv.key, kv.raw if kind == "put" else None, kv.mod_revision))
            self.next_revision = kv.mod_revision + 1
        return True

    def _stream_once(self) -> None:
        url = self.client._gw.get_url("watch")
        resp = self._session.post(
            url, json=self._request(), stream=True, timeout=(self.client.timeout_s, self.read_timeout_s)
        )
        self._resp = resp
        if self._stop.is_set():
            _abort_stream(resp)
            return
        if resp.status_code != 200:
            raise EtcdUnavailable(f"watch HTTP {resp.status_code}", self.client.endpoint, "will retry")
        buf = b""
        for chunk in resp.iter_content(chunk_size=None):
            if self._stop.is_set():
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                if not self.connected:
                    self._set_state(True)
                if not self._handle(json.loads(line)):
                    _abort_stream(resp)
                    return
        raise EtcdUnavailable("watch stream ended", self.client.endpoint, "will retry")

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            try:
                self._stream_once()
                backoff = self.backoff_initial_s  # clean end (resync or stop): reconnect at once
                continue
            except requests.exceptions.ReadTimeout:
                backoff = self.backoff_initial_s  # idle stream: just resume
                continue
            except Exception as exc:  # the watch thread must outlive any stream failure
                if self._stop.is_set():
                    break
                if self.connected:
                    log.warning(
                        "watch %s disconnected: %s; resuming at revision %s",
                        self.key,
                        exc,
                        self.next_revision,
                    )
                self._set_state(False)
            self.reconnects += 1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    def stop(self) -> None:
        self._stop.set()
        if self._resp is not None:
            _abort_stream(self._resp)
        self._thread.join(timeout=5)
        self._session.close()
