"""ConfigRuntime: a service's settings, live from etcd, as one immutable object swapped atomically.

Pipeline for every change of `config/<service>` or `config/<service>/nodes/<node>`:
decode → validate (pydantic, extra=forbid) → diff → split hot / restart-required → run the apply
steps (roll back the ones that ran when one fails) → swap `current` → cache on disk → log old→new
with the revision → metrics → ConfigChange event → status key. An invalid document is rejected
with the reason (status key, log, metric) and the last good settings stay.

Layers, later wins: the settings given at start (`--config` file fields or defaults), the etcd
document, the node's override document, `overrides` (command-line flags of the service). At start every field is taken (no resource is open yet);
afterwards only hot fields change in `current`, restart-required ones are reported as pending.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from libs.common.errors import ConfigError
from libs.common.events import uuid7
from libs.common.settings import describe_validation_error, validate_settings
from libs.etcd_client.client import EtcdClient, KeyValue, WatchEvent
from libs.etcd_client.errors import EnvelopeError, EtcdError, EtcdUnavailable
from libs.etcd_client.settings import EtcdSettings
from libs.watcher.diff import MISSING, Change, apply_changes, deep_merge, diff, split
from libs.watcher.metrics import SOURCES, config_metrics
from ml_defender.v1 import config_pb2

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
ApplyStep = Callable[[Any, Any], object]  # return value ignored; raise to roll back
Source = Literal["etcd", "cache", "file", "defaults"]
Result = Literal["APPLIED", "REJECTED", "ROLLED_BACK", "UNCHANGED"]


class Emitter(Protocol):
    def __call__(self, change: config_pb2.ConfigChange) -> object: ...


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, default=str)


class ConfigRuntime(Generic[M]):
    """Live settings of one service on one node; see the module docstring and libs/watcher/README.md."""

    def __init__(
        self,
        service: str,
        model: type[M],
        *,
        initial: M | None = None,
        hot_fields: Sequence[str] = (),
        on_apply: ApplyStep | Sequence[ApplyStep] | None = None,
        etcd: EtcdSettings | None = None,
        client: Any = None,
        node: str | None = None,
        cache_dir: Path | str | None = None,
        emit: Emitter | None = None,
        version: str = "",
        source: Source | None = None,
        manage_log_level: bool = True,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.model = model
        self.hot_fields = tuple(hot_fields)
        self.steps: list[ApplyStep] = (
            [] if on_apply is None else ([on_apply] if callable(on_apply) else list(on_apply))
        )
        self.etcd = etcd
        self._client = client
        self._initial = initial if initial is not None else model()
        # the whole initial object is the bottom layer, so partial etcd documents merge with it
        # field by field (also inside dict fields such as the detector's `models`)
        self._file_layer = self._initial.model_dump(mode="json")
        from_file = bool(self._initial.model_dump(exclude_unset=True))
        self._overrides = overrides or {}  # command-line flags: win over etcd
        self._current: M = self._initial
        self.node = node or str(getattr(self._initial, "node_id", "") or os.uname().nodename)
        base = (
            Path(cache_dir)
            if cache_dir is not None
            else (etcd.cache_dir if etcd else Path("var/config-cache"))
        )
        self.cache_path = base / f"{service}@{self.node}.json"
        self.version = version
        self.manage_log_level = manage_log_level
        self.emit = emit
        self.revision = 0
        self.applied_ns = 0  # wall clock when the settings in force were swapped in (benchmarks)
        self.applying_revision = 0
        self.seen_revision = 0
        self.source: Source = source or ("file" if from_file else "defaults")
        self.pending_restart: tuple[str, ...] = ()
        self.last_error = ""
        self.metrics = config_metrics(service)
        self.base_key = f"config/{service}"
        self.node_key = f"config/{service}/nodes/{self.node}"
        self.status_key = f"status/{self.node}/{service}/config"
        self.heartbeat_key = f"nodes/{self.node}/{service}"
        self._raw: dict[str, bytes | None] = {self.base_key: None, self.node_key: None}
        self._lock = threading.RLock()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._watch: Any = None
        self._heartbeat: Any = None
        self._connector: threading.Thread | None = None
        self._pusher: Any = None
        self._started_at = time.time()
        self._set_source(self.source)

    # -- public API -------------------------------------------------------------------------
    @property
    def current(self) -> M:
        """The applied settings (immutable; read it again for each unit of work)."""
        return self._current

    @property
    def connected(self) -> bool:
        return bool(self._watch is not None and self._watch.connected)

    def add_step(self, step: ApplyStep) -> None:
        """Register an apply step `step(old, new)`; on rollback it is called as `step(new, old)`."""
        self.steps.append(step)

    def start(self) -> M:
        """Load the configuration (etcd, else the disk cache, else file/defaults) and start watching.

        Call it before opening resources: at start every field, restart-required ones included,
        is taken from etcd or the cache. Returns `current`.
        """
        if self.etcd is None and self._client is None:
            log.info(
                "configuration from %s (no etcd configured)", self.source, extra={"service": self.service}
            )
            return self._current
        if self._client is None:
            assert self.etcd is not None
            self._client = EtcdClient(
                self.etcd.endpoint, self.etcd.prefix, self.etcd.key_file, self.etcd.timeout_s
            )
        if self.emit is None and self.etcd is not None and self.etcd.events_endpoint:
            self._open_pusher(self.etcd.events_endpoint)
        try:
            self._sync(boot=True)
        except EtcdUnavailable as exc:
            self._start_offline(exc)
        return self._current

    def stop(self) -> None:
        """Stop watching, drop the heartbeat key (revoke its lease) and close the event socket."""
        self._stop.set()
        if self._connector is not None:
            self._connector.join(timeout=5)
        if self._watch is not None:
            self._watch.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop(revoke=True)
        if self._pusher is not None:
            self._pusher.close()
            self._pusher = None

    def wait_revision(self, revision: int, timeout: float) -> bool:
        """Block until a document at `revision` or later was handled (applied or rejected)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.seen_revision < revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- start-up ---------------------------------------------------------------------------
    def _start_offline(self, exc: EtcdUnavailable) -> None:
        cached = self._read_cache()
        if cached is not None:
            self._current, self.revision = cached
            self._set_source("cache")
            log.warning(
                "etcd unreachable at start: running from the cached last good configuration (revision %d); "
                "will pick etcd up when it appears",
                self.revision,
                extra={"service": self.service, "error": exc.what, "cache": str(self.cache_path)},
            )
        else:
            log.warning(
                "etcd unreachable at start and no cached configuration: running from %s; "
                "will pick etcd up when it appears",
                self.source,
                extra={"service": self.service, "error": exc.what, "cache": str(self.cache_path)},
            )
        self.metrics.revision.set(self.revision)
        self.metrics.etcd_connected.set(0)
        self._connector = threading.Thread(
            target=self._connect_loop, name=f"etcd-connect:{self.service}", daemon=True
        )
        self._connector.start()

    def _connect_loop(self) -> None:
        assert self.etcd is not None or self._client is not None
        backoff = self.etcd.backoff_initial_s if self.etcd else 0.1
        backoff_max = self.etcd.backoff_max_s if self.etcd else 5.0
        while not self._stop.is_set():
            try:
                self._sync(boot=False)
                log.info("etcd reachable again: configuration live", extra={"service": self.service})
                return
            except EtcdUnavailable:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, backoff_max)
            except Exception:
                log.exception("unexpected error while connecting to etcd")
                self._stop.wait(backoff_max)

    def _sync(self, boot: bool) -> None:
        """Read both documents, evaluate them, then watch from the next revision and start the heartbeat."""
        kvs, rev = self._client.get_range(self.base_key, prefix=True)
        by_key: dict[str, KeyValue] = {kv.key: kv for kv in kvs}
        with self._lock:
            for key in self._raw:
                self._raw[key] = by_key[key].raw if key in by_key else None
            doc_rev = max((by_key[k].mod_revision for k in self._raw if k in by_key), default=0)
            self._evaluate(doc_rev, boot=boot, read_revision=rev)
        self.metrics.etcd_connected.set(1)
        if self._stop.is_set():
            return
        ttl = self.etcd.lease_ttl_s if self.etcd else 10
        self._watch = self._client.watch(
            self.base_key,
            self._on_event,
            prefix=True,
            start_revision=rev + 1,
            on_state=self._on_state,
            **(
                {"backoff_initial_s": self.etcd.backoff_initial_s, "backoff_max_s": self.etcd.backoff_max_s}
                if self.etcd
                else {}
            ),
        )
        self._heartbeat = self._client.keep_alive(self.heartbeat_key, self._heartbeat_doc, ttl)

    # -- change handling --------------------------------------------------------------------
    def _on_state(self, up: bool) -> None:
        self.metrics.etcd_connected.set(1 if up else 0)
        if up:
            log.info("etcd watch connected", extra={"service": self.service, "revision": self.revision})
        else:
            log.warning(
                "etcd watch lost: running on the last good configuration, reconnecting",
                extra={"service": self.service, "revision": self.revision},
            )

    def _on_event(self, ev: WatchEvent) -> None:
        if ev.key not in self._raw:
            return
        with self._lock:
            self._raw[ev.key] = ev.raw if ev.kind == "put" else None
            self._evaluate(ev.mod_revision, boot=False)

    def _decode_layers(self) -> list[dict[str, Any] | None]:
        layers: list[dict[str, Any] | None] = []
        for key in (self.base_key, self.node_key):
            raw = self._raw[key]
            if raw is None:
                layers.append(None)
                continue
            value = self._client.decode(KeyValue(key, raw, 0, 0, 0))
            if not isinstance(value, dict):
                raise ConfigError(
                    f"settings must be a JSON object, got {type(value).__name__}",
                    self._client.full_key(key),
                    "write a JSON object",
                )
            layers.append(value)
        return layers

    def _evaluate(self, revision: int, boot: bool, read_revision: int = 0) -> None:
        """Decide on the documents in `self._raw` at `revision` (caller holds the lock)."""
        try:
            layers = self._decode_layers()
            if layers == [None, None]:
                if boot:
                    log.info(
                        "no configuration in etcd at %s: using %s",
                        self._client.full_key(self.base_key),
                        self.source,
                        extra={"service": self.service},
                    )
                    self._set_source(self.source)
                    self._status("UNCHANGED", revision, "no document in etcd", [])
                else:
                    log.warning(
                        "configuration document deleted from etcd: keeping the last good configuration",
                        extra={"service": self.service, "revision": revision},
                    )
                self._mark_seen(max(revision, read_revision))
                return
            merged = deep_merge(self._file_layer, *layers, self._overrides)
            candidate = validate_settings(self.model, merged, self._client.full_key(self.base_key))
        except (EnvelopeError, ConfigError) as exc:
            self._reject(revision, exc.message, boot)
            return
        old = self._current
        old_doc = old.model_dump(mode="json")
        changes = diff(old_doc, candidate.model_dump(mode="json"), self.hot_fields)
        if boot:
            changes = [Change(c.path, c.old, c.new, True) for c in changes]
        hot, restart = split(changes)
        try:
            new = self.model.model_validate(apply_changes(old_doc, hot)) if hot else old
        except ValidationError as exc:
            self._reject(
                revision, "hot fields alone do not validate: " + describe_validation_error(exc), boot
            )
            return
        if hot and not boot:
            self.applying_revision = revision  # steps may read it (e.g. to stamp events)
            done: list[ApplyStep] = []
            try:
                for step in self.steps:
                    step(old, new)
                    done.append(step)
            except Exception as exc:
                for step in reversed(done):
                    try:
                        step(new, old)
                    except Exception:
                        log.exception("rollback step failed", extra={"service": self.service})
                reason = f"apply step failed: {type(exc).__name__}: {exc}"
                self.metrics.reloads.labels("rolled_back").inc()
                self.last_error = reason
                log.error(
                    "configuration change rolled back, keeping the previous settings: %s",
                    reason,
                    extra={
                        "service": self.service,
                        "revision": revision,
                        "changes": [self._change_doc(c) for c in hot],
                    },
                )
                self._status("ROLLED_BACK", revision, reason, changes)
                self._send("ROLLED_BACK", revision, changes, reason)
                self._mark_seen(max(revision, read_revision))
                return
        self._current = new
        if hot:
            self.applied_ns = time.time_ns()  # before cache, log and status: what an observer times
        if self.manage_log_level:
            self._apply_log_level(old, new)
        prev_revision = self.revision
        self.revision = revision
        self.pending_restart = tuple(c.path for c in restart)
        self.last_error = ""
        self._set_source("etcd")
        self._write_cache(merged, revision)
        self.metrics.revision.set(revision)
        self.metrics.pending_restart.set(len(self.pending_restart))
        result: Result = "APPLIED" if changes else "UNCHANGED"
        if changes:
            self.metrics.reloads.labels("applied").inc()
            log.info(
                "configuration %s at revision %d (was %d): %d hot change(s) applied, %d need a restart",
                "loaded" if boot else "applied",
                revision,
                prev_revision,
                len(hot),
                len(restart),
                extra={
                    "service": self.service,
                    "revision": revision,
                    "changes": [self._change_doc(c) for c in changes],
                    "pending_restart": list(self.pending_restart),
                },
            )
            if restart:
                log.warning(
                    "restart required to apply: %s",
                    ", ".join(self.pending_restart),
                    extra={"service": self.service, "revision": revision},
                )
            self._send("APPLIED", revision, changes, "", prev_revision)
        self._status(result, revision, "", changes)
        if self._heartbeat is not None:
            self._heartbeat.refresh_value()
        self._mark_seen(max(revision, read_revision))

    @staticmethod
    def _apply_log_level(old: BaseModel, new: BaseModel) -> None:
        """`log_level` is hot in every service: set the root logger's level when it changes."""
        level = getattr(new, "log_level", None)
        if isinstance(level, str) and level != getattr(old, "log_level", None):
            logging.getLogger().setLevel(level.upper())

    def _reject(self, revision: int, reason: str, boot: bool) -> None:
        self.metrics.reloads.labels("rejected").inc()
        self.last_error = reason
        log.error(
            "configuration at revision %d rejected, keeping revision %d: %s",
            revision,
            self.revision,
            reason,
            extra={"service": self.service, "revision": revision, "kept_revision": self.revision},
        )
        if boot:
            cached = self._read_cache()
            if cached is not None:
                self._current, self.revision = cached
                self._set_source("cache")
        self._status("REJECTED", revision, reason, [])
        self._send("REJECTED", revision, [], reason)
        self._mark_seen(revision)

    def _mark_seen(self, revision: int) -> None:
        with self._cond:
            self.seen_revision = max(self.seen_revision, revision)
            self._cond.notify_all()

    @staticmethod
    def _change_doc(c: Change) -> dict[str, Any]:
        return {
            "path": c.path,
            "old": None if c.old is MISSING else c.old,
            "new": None if c.new is MISSING else c.new,
            "hot": c.hot,
        }

    # -- outputs ----------------------------------------------------------------------------
    def _set_source(self, source: Source) -> None:
        self.source = source
        for s in SOURCES:
            self.metrics.source.labels(s).set(1 if s == source else 0)

    def _status(self, result: Result, revision: int, error: str, changes: list[Change]) -> None:
        if self._client is None:
            return
        doc = {
            "result": result,
            "revision": self.revision,
            "document_revision": revision,
            "error": error,
            "pending_restart": list(self.pending_restart),
            "changed": [c.path for c in changes],
            "source": self.source,
            "applied_ns": self.applied_ns,
            "time": time.time(),
        }
        try:
            self._client.set(self.status_key, doc)
        except EtcdError as exc:
            log.warning("cannot write status key %s: %s", self.status_key, exc.what)

    def _open_pusher(self, endpoint: str) -> None:
        from libs.common.zmqio import Pusher, SocketSettings

        try:
            self._pusher = Pusher(
                self.service, SocketSettings(endpoint=endpoint, hwm=1000, send_timeout_ms=0, linger_ms=0)
            )
            self.emit = self._pusher.send
        except ConfigError as exc:
            log.warning("ConfigChange events disabled: %s", exc.message, extra={"service": self.service})

    def _send(
        self, result: str, revision: int, changes: list[Change], error: str, old_revision: int = -1
    ) -> None:
        if self.emit is None:
            return
        msg = config_pb2.ConfigChange(
            service=self.service,
            node=self.node,
            old_revision=self.revision if old_revision < 0 else old_revision,
            new_revision=revision,
            result=getattr(config_pb2, f"CONFIG_RESULT_{result}"),
            error=error,
            timestamp_ns=time.time_ns(),
            change_id=uuid7(),
        )
        for c in changes:
            d = self._change_doc(c)
            msg.diff.add(path=c.path, old_json=_json(d["old"]), new_json=_json(d["new"]), hot=c.hot)
        try:
            self.emit(msg)
        except Exception:
            log.exception("cannot send ConfigChange event")

    def _heartbeat_doc(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "node": self.node,
            "pid": os.getpid(),
            "version": self.version,
            "config_revision": self.revision,
            "config_source": self.source,
            "pending_restart": list(self.pending_restart),
            "status": "running" if not self.last_error else "running (last config change failed)",
            "started_at": self._started_at,
        }

    # -- disk cache -------------------------------------------------------------------------
    def _write_cache(self, document: dict[str, Any], revision: int) -> None:
        """Atomically save the last good document (temp file, fsync, rename), mode 0600."""
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps(
                {"service": self.service, "node": self.node, "revision": revision, "document": document},
                sort_keys=True,
                indent=1,
            )
            fd, tmp = tempfile.mkstemp(prefix=".cache-", dir=self.cache_path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.cache_path)
        except OSError as exc:
            log.warning("cannot cache configuration at %s: %s", self.cache_path, exc.strerror)

    def _read_cache(self) -> tuple[M, int] | None:
        try:
            data = json.loads(self.cache_path.read_text())
            settings = validate_settings(self.model, data["document"], str(self.cache_path))
            return settings, int(data.get("revision", 0))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
            log.warning("ignoring unreadable configuration cache %s: %s", self.cache_path, exc)
            return None
