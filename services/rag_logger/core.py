"""The rag-logger's heart without sockets: accept messages, keep policy, bounded queue, one writer.

`submit()` runs in the receiving thread: it applies the keep policy, stamps `logged_ns`, fixes the
pair's bytes and queues it. Records are spread over `writer_processes` writers by a hash of their id
(one writer when the writer is a thread of the service, `writer_processes: 0`). Each writer has its
own part of the queue, its own thread taking group-commit batches from it, and its own store: a
child process that does the file work (writer.py), so encoding here and the file system work there
use several cores, and one writer's wait on the device overlaps another's work. A record's id
always meets the same writer, so a redelivered event is recognised as a duplicate there. The daily
.jsonl is shared (one appender, under a lock). When the disk is full or unwritable a writer keeps
its batch, retries, and its queue absorbs arrivals up to its bound; beyond it events are dropped
and counted by reason.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable

from google.protobuf.message import Message

from ml_defender.v1 import config_pb2, detection_pb2
from services.rag_logger import fsio, layout
from services.rag_logger import metrics as m
from services.rag_logger.config import SERVICE, RagLoggerSettings
from services.rag_logger.errors import StorageError
from services.rag_logger.layout import Record
from services.rag_logger.memory import release_free_memory
from services.rag_logger.policy import keep_reason
from services.rag_logger.store import ArtifactStore
from services.rag_logger.writer import JsonlSink, RemoteStore

log = logging.getLogger(__name__)
Clock = Callable[[], int]
OnCommit = Callable[[list[Record]], None]
TRIM_AFTER_BACKLOG_EVENTS = 256  # a drained backlog at least this deep hands its free memory back
TRIM_MIN_INTERVAL_S = 5.0  # a trim after a deep backlog takes 20-40 ms; not more often than this


class _Writer:
    """One writer: its part of the queue, its thread, its store (see the module docstring)."""

    def __init__(
        self, core: LoggerCore, index: int, store: ArtifactStore | RemoteStore, capacity: int
    ) -> None:
        self.core = core
        self.index = index
        self.store = store
        self.capacity = capacity
        self.queue: collections.deque[Record] = collections.deque()
        self.cond = threading.Condition()
        self.first_arrival = 0.0
        self.stopping = False
        self.wake = threading.Event()
        self.blocked_reason = ""
        self.blocked_since = 0.0
        self.backlog_peak = 0  # deepest queue since the last memory trim
        self.trimmed_at = 0.0
        name = "rag-logger-writer" if index == 0 else f"rag-logger-writer-{index}"
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def take_batch(self) -> list[Record]:
        """Up to max_batch_events records, waiting at most max_delay_ms after the first arrival."""
        with self.cond:
            while not self.queue and not self.stopping:
                self.cond.wait(1.0)
                if not self.queue:
                    self.rotate()
            commit = self.core.settings.commit
            deadline = self.first_arrival + commit.max_delay_ms / 1000.0
            while len(self.queue) < commit.max_batch_events and not self.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            depth = len(self.queue)
            if depth > self.backlog_peak:
                self.backlog_peak = depth
            n = min(depth, commit.max_batch_events)
            batch = [self.queue.popleft() for _ in range(n)]
            if self.queue:
                self.first_arrival = self.queue[0].accepted
        m.QUEUE_DEPTH.set(self.core.queue_depth())
        return batch

    def rotate(self) -> None:
        try:
            self.store.rotate_if_needed()
        except Exception:  # rotation must never kill the writer
            log.exception("day rotation failed")

    def run(self) -> None:
        core = self.core
        try:
            self.prepare()
            # the other writers wait for this one's recovery: retry it even with nothing to write
            while self.index == 0 and len(core.writers) > 1 and not core.recovered.is_set():
                if self.stopping or self.wake.wait(core.settings.storage.retry_interval_ms / 1000.0):
                    break
                self.prepare()
            while True:
                batch = self.take_batch()
                if not batch:
                    if self.stopping:
                        break
                    continue
                self.write(batch)
                del batch  # before a trim, so the last batch's buffers are free too
                self.trim_after_backlog()
        except BaseException as exc:  # a bug: say so loudly and let the service stop (and be restarted)
            core.failed = exc
            core.stop_accepting()
            with self.cond:
                lost = len(self.queue)
                self.queue.clear()
            core.add_unwritten(lost)
            log.critical("writer thread failed; the service stops", exc_info=True)
            if core.on_fatal is not None:
                core.on_fatal(exc)
        finally:
            self.store.close()

    def prepare(self) -> None:
        """Recovery at start, before any batch; a failure here just leaves the writer blocked.

        The first writer runs start-up recovery for the whole directory; the others wait for it, so
        recovery never meets a commit in progress.
        """
        core = self.core
        if self.index > 0:
            while not core.recovered.wait(0.2):
                if self.stopping:
                    return
        try:
            self.start_store()
        except StorageError as err:
            core.set_blocked(self, err)
        else:
            if self.blocked_reason:  # a retried start-up went through
                core.clear_blocked(self)

    def start_store(self) -> None:
        """Prepare the store: writer 0 runs start-up recovery, the others start only after it."""
        core = self.core
        if self.index > 0 and not core.recovered.is_set():
            raise StorageError(
                "locked",
                "waiting for writer 0's start-up recovery (it waits for the writers' lock)",
                self.store.root,
            )
        self.store.prepare(recover=self.index == 0 and not core.recovered.is_set())
        if self.index == 0:
            core.recovered.set()

    def write(self, batch: list[Record]) -> None:
        """Commit `batch`, retrying while storage is blocked; give up only at a stop's deadline."""
        core = self.core
        drain_deadline: float | None = None
        while True:
            s = core.settings
            self.store.configure(
                s.commit.fsync,
                s.jsonl.enabled,
                s.jsonl.fsync,
                s.jsonl.max_open_files,
                s.commit.sync_method,
                s.commit.sync_group_events,
            )
            self.rotate()
            t0 = time.perf_counter()
            try:
                if not self.store.ready:
                    self.start_store()
                core.check_space(self.store.root, s.storage.min_free_bytes)
                result = self.store.commit(batch)
            except StorageError as err:
                core.set_blocked(self, err)
                if self.stopping:
                    drain_deadline = drain_deadline or time.monotonic() + s.storage.drain_timeout_s
                    if time.monotonic() >= drain_deadline:
                        self.give_up(batch)
                        return
                retry_s = s.storage.retry_interval_ms / 1000.0
                if self.stopping:  # wake stays set once stopping; sleep so retries do not spin
                    time.sleep(min(retry_s, 0.1))
                else:
                    self.wake.wait(retry_s)
                continue
            break
        latency = time.perf_counter() - t0
        if self.blocked_reason:
            core.clear_blocked(self)
        now = time.monotonic()
        m.COMMIT_LATENCY.observe(latency)
        m.BATCH.observe(len(result.written))
        m.BYTES.inc(result.nbytes)
        configs = 0
        observe = m.EVENT_LATENCY.observe
        for r in result.written:
            configs += r.kind == "config"
            observe(now - r.accepted)
        m.WRITTEN_EVENT.inc(len(result.written) - configs)
        m.WRITTEN_CONFIG.inc(configs)
        if result.duplicates:
            m.DROPPED.labels("duplicate").inc(len(result.duplicates))
            log.info("%d records already on disk were not rewritten", len(result.duplicates))
        if core.on_commit is not None:
            core.on_commit(result.written)
        self.store.append_jsonl(result.written)

    def trim_after_backlog(self) -> None:
        """Once a deep backlog has drained, hand the heap pages its buffers used back to the kernel."""
        if self.backlog_peak < TRIM_AFTER_BACKLOG_EVENTS or self.queue:
            return
        now = time.monotonic()
        if now - self.trimmed_at >= TRIM_MIN_INTERVAL_S:
            self.backlog_peak = 0
            self.trimmed_at = now
            if release_free_memory():
                self.core.count_trim()

    def give_up(self, batch: list[Record]) -> None:
        with self.cond:
            lost = len(batch) + len(self.queue)
            self.queue.clear()
        self.core.add_unwritten(lost)
        m.DROPPED.labels("shutdown").inc(lost)
        m.QUEUE_DEPTH.set(self.core.queue_depth())
        log.error(
            "stopping with the artifacts still not writable: %d events not written",
            lost,
            extra={
                "reason": self.blocked_reason,
                "writer": self.index,
                "fix": "fix the storage problem before stopping the service",
            },
        )


class LoggerCore:
    """Accepts DetectionEvent / ConfigChange messages and writes the kept ones durably."""

    def __init__(
        self,
        settings: RagLoggerSettings,
        clock: Clock = time.time_ns,
        on_commit: OnCommit | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._settings = settings
        self.on_fatal = on_fatal
        self.failed: BaseException | None = None
        self.clock = clock
        self.on_commit = on_commit
        self.capacity = settings.queue_max_events
        s = settings
        args = (
            str(s.artifacts_root),
            clock,
            s.commit.fsync,
            s.jsonl.enabled,
            s.jsonl.fsync,
            s.jsonl.max_open_files,
            s.commit.io_threads,
            s.commit.sync_method,
            s.commit.sync_group_events,
        )
        n = s.writer_processes
        self.jsonl: JsonlSink | None = None
        stores: list[ArtifactStore | RemoteStore]
        if n == 0:
            stores = [ArtifactStore(*args)]
        else:
            self.jsonl = JsonlSink(ArtifactStore(*args))
            stores = [
                RemoteStore(*args, index=i, jsonl_sink=self.jsonl, log_level=s.log_level) for i in range(n)
            ]
            for st in stores:
                st.service = SERVICE  # type: ignore[union-attr]
        per_writer = -(-self.capacity // len(stores))
        self.writers = [_Writer(self, i, st, per_writer) for i, st in enumerate(stores)]
        self._json_here = n == 0  # writer processes derive each .json from its .pb themselves
        self.recovered = threading.Event()  # the first writer's start-up recovery is done
        self._lock = threading.Lock()
        self._accepting = True
        self.blocked_reason = ""
        self.unwritten = 0
        self._refused = 0
        self._refused_log_at = 0.0
        self.memory_trims = 0
        m.QUEUE_CAPACITY.set(self.capacity)
        m.QUEUE_DEPTH.set(0)
        m.BLOCKED.set(0)
        m.DISK_FULL.set(0)

    @property
    def settings(self) -> RagLoggerSettings:
        return self._settings

    @property
    def store(self) -> ArtifactStore | RemoteStore:
        """The first writer's store (the only one with `writer_processes: 0`)."""
        return self.writers[0].store

    @property
    def stores(self) -> list[ArtifactStore | RemoteStore]:
        return [w.store for w in self.writers]

    def update_settings(self, new: RagLoggerSettings) -> None:
        """Swap in new settings; only HOT_FIELDS take effect before a restart."""
        self._settings = new

    def start(self) -> None:
        # the root at once (the writers' own start-up takes a moment); their prepare reports failures
        with contextlib.suppress(OSError):
            os.makedirs(self._settings.artifacts_root, exist_ok=True)
        for w in self.writers:
            w.thread.start()

    # ---- receiving side -------------------------------------------------------------------

    def submit(self, msg: Message) -> bool:
        """Queue one message for writing; False when it is not kept or dropped (always counted)."""
        now = self.clock()
        try:
            if isinstance(msg, detection_pb2.DetectionEvent):
                m.RECEIVED_DETECTION.inc()
                reason = keep_reason(msg, self._settings.keep)
                if reason is None:
                    m.NOT_KEPT.inc()
                    return False
                m.KEPT_BY_REASON[reason].inc()
                rec = layout.encode_event(msg, now, self._json_here)
            elif isinstance(msg, config_pb2.ConfigChange):
                m.RECEIVED_CONFIG.inc()
                rec = layout.encode_config(msg, now)
            else:
                m.RECEIVED.labels("other").inc()
                raise ValueError(f"unexpected message type {msg.DESCRIPTOR.full_name}")
        except ValueError as exc:
            m.DROPPED.labels("invalid").inc()
            self._refused += 1
            t = time.monotonic()
            if t >= self._refused_log_at:  # at most one line per second, with the count since the last
                self._refused_log_at = t + 1.0
                log.warning(
                    "message refused: %s",
                    exc,
                    extra={
                        "type": msg.DESCRIPTOR.full_name,
                        "refused_since_last_log": self._refused,
                        "fix": "the sender must set a file-safe id and finite scores",
                    },
                )
                self._refused = 0
            return False
        return self.enqueue(rec)

    def writer_of(self, rid: str) -> int:
        """The writer a record id belongs to (stable across restarts: crc32, not Python's hash)."""
        n = len(self.writers)
        return zlib.crc32(rid.encode()) % n if n > 1 else 0

    def enqueue(self, rec: Record) -> bool:
        """Queue an encoded Record; at the bound it is dropped and counted (disk_full or queue_full)."""
        rec.accepted = time.monotonic()
        w = self.writers[self.writer_of(rec.rid)]
        with w.cond:
            if w.stopping or not self._accepting:
                m.DROPPED.labels("shutdown").inc()
                return False
            depth = len(w.queue)
            if depth >= w.capacity:  # the writers share one filesystem: any full means it is full
                full = any(x.blocked_reason == "disk_full" for x in self.writers)
                m.DROPPED.labels("disk_full" if full else "queue_full").inc()
                return False
            w.queue.append(rec)
            if depth == 0:
                w.first_arrival = rec.accepted
                w.cond.notify()
            elif depth + 1 >= self._settings.commit.max_batch_events:
                w.cond.notify()
        m.QUEUE_DEPTH.set(self.queue_depth())
        return True

    def queue_depth(self) -> int:
        return sum(len(w.queue) for w in self.writers)

    # ---- shared writer state --------------------------------------------------------------

    def stop_accepting(self) -> None:
        self._accepting = False

    def add_unwritten(self, n: int) -> None:
        with self._lock:
            self.unwritten += n

    def count_trim(self) -> None:
        with self._lock:
            self.memory_trims += 1
        m.MEMORY_TRIMS.inc()

    def check_space(self, root: str, min_free: int) -> None:
        if min_free <= 0:
            return
        try:
            free = fsio.free_bytes(root)
        except OSError as exc:
            raise StorageError.from_os(exc, root) from None
        m.DISK_FREE.set(free)
        if free < min_free:
            raise StorageError(
                "disk_full",
                f"disk full: {free} bytes free, below storage.min_free_bytes={min_free}",
                root,
            )

    def set_blocked(self, w: _Writer, err: StorageError) -> None:
        m.STORAGE_ERRORS.labels(err.reason).inc()
        if w.blocked_reason == err.reason:
            return
        with self._lock:
            w.blocked_reason = err.reason
            w.blocked_since = time.monotonic()
            self.blocked_reason = err.reason
            m.BLOCKED.set(1)
            m.DISK_FULL.set(1 if any(x.blocked_reason == "disk_full" for x in self.writers) else 0)
        log.error(
            "artifacts not writable, writing paused (what is written is kept): %s",
            err.message,
            extra={
                "reason": err.reason,
                "writer": w.index,
                "queued": len(w.queue),
                "queue_capacity": w.capacity,
            },
        )

    def clear_blocked(self, w: _Writer) -> None:
        with self._lock:
            reason, w.blocked_reason = w.blocked_reason, ""
            still = [x.blocked_reason for x in self.writers if x.blocked_reason]
            self.blocked_reason = still[0] if still else ""
            m.BLOCKED.set(1 if still else 0)
            m.DISK_FULL.set(1 if "disk_full" in still else 0)
        log.warning(
            "artifacts writable again: writing resumed",
            extra={
                "reason": reason,
                "writer": w.index,
                "blocked_s": round(time.monotonic() - w.blocked_since, 3),
            },
        )

    # ---- stop -----------------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> int:
        """Drain the queues (waiting up to storage.drain_timeout_s for a blocked disk) and stop.

        Returns the number of accepted events that could not be written.
        """
        for w in self.writers:
            with w.cond:
                w.stopping = True
                w.cond.notify_all()
            w.wake.set()
        limit = timeout if timeout is not None else self._settings.storage.drain_timeout_s + 30.0
        deadline = time.monotonic() + limit
        for w in self.writers:
            if w.thread.is_alive():
                w.thread.join(max(0.0, deadline - time.monotonic()))
                if w.thread.is_alive():
                    log.error("writer %d did not stop within %.1f s", w.index, limit)
        if self.jsonl is not None and not any(w.thread.is_alive() for w in self.writers):
            self.jsonl.close()
        return self.unwritten
