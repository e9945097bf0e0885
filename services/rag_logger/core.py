"""The rag-logger's heart without sockets: accept messages, keep policy, bounded queue, one writer.

`submit()` runs in the receiving thread: it applies the keep policy, stamps `logged_ns`, fixes the
pair's bytes and queues it. One writer thread takes group-commit batches from the queue and owns
the ArtifactStore (rotation included), so no file state is shared between threads. When the disk
is full or unwritable the writer keeps its batch, retries, and the queue absorbs arrivals up to its
bound; beyond it events are dropped and counted by reason.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from collections.abc import Callable

from google.protobuf.message import Message

from ml_defender.v1 import config_pb2, detection_pb2
from services.rag_logger import fsio, layout
from services.rag_logger import metrics as m
from services.rag_logger.config import RagLoggerSettings
from services.rag_logger.errors import StorageError
from services.rag_logger.layout import Record
from services.rag_logger.policy import keep_reason
from services.rag_logger.store import ArtifactStore

log = logging.getLogger(__name__)
Clock = Callable[[], int]
OnCommit = Callable[[list[Record]], None]
TRIM_AFTER_BACKLOG_EVENTS = 256  # a drained backlog at least this deep hands its free memory back
TRIM_MIN_INTERVAL_S = 5.0  # a trim after a deep backlog takes 20-40 ms; not more often than this


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> bool:
    """Return the C heap's free pages to the kernel (glibc malloc_trim); False when unavailable.

    A backlog holds thousands of multi-KB pair buffers (glibc, not Python's small-object allocator)
    at once; once they are freed, glibc keeps most of those pages because later allocations sit
    above them in the heap, so RSS would step up after every backlog without this.
    """
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


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
        self.store = ArtifactStore(
            str(s.artifacts_root),
            clock,
            s.commit.fsync,
            s.jsonl.enabled,
            s.jsonl.fsync,
            s.jsonl.max_open_files,
            s.commit.io_threads,
            s.commit.sync_method,
        )
        self._queue: collections.deque[Record] = collections.deque()
        self._cond = threading.Condition()
        self._first_arrival = 0.0
        self._stopping = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rag-logger-writer", daemon=True)
        self.blocked_reason = ""
        self._blocked_since = 0.0
        self.unwritten = 0
        self._refused = 0
        self._refused_log_at = 0.0
        self._backlog_peak = 0  # deepest queue since the last memory trim
        self._trimmed_at = 0.0
        self.memory_trims = 0
        m.QUEUE_CAPACITY.set(self.capacity)
        m.QUEUE_DEPTH.set(0)
        m.BLOCKED.set(0)
        m.DISK_FULL.set(0)

    @property
    def settings(self) -> RagLoggerSettings:
        return self._settings

    def update_settings(self, new: RagLoggerSettings) -> None:
        """Swap in new settings; only HOT_FIELDS take effect before a restart."""
        self._settings = new

    def start(self) -> None:
        self._thread.start()

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
                rec = layout.encode_event(msg, now)
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

    def enqueue(self, rec: Record) -> bool:
        """Queue an encoded Record; at the bound it is dropped and counted (disk_full or queue_full)."""
        rec.accepted = time.monotonic()
        with self._cond:
            if self._stopping:
                m.DROPPED.labels("shutdown").inc()
                return False
            depth = len(self._queue)
            if depth >= self.capacity:
                m.DROPPED.labels("disk_full" if self.blocked_reason == "disk_full" else "queue_full").inc()
                return False
            self._queue.append(rec)
            if depth == 0:
                self._first_arrival = rec.accepted
                self._cond.notify()
            elif depth + 1 >= self._settings.commit.max_batch_events:
                self._cond.notify()
        m.QUEUE_DEPTH.set(depth + 1)
        return True

    def queue_depth(self) -> int:
        return len(self._queue)

    # ---- writer thread --------------------------------------------------------------------

    def _take_batch(self) -> list[Record]:
        """Up to max_batch_events records, waiting at most max_delay_ms after the first arrival."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait(1.0)
                if not self._queue:
                    self._rotate()
            commit = self._settings.commit
            deadline = self._first_arrival + commit.max_delay_ms / 1000.0
            while len(self._queue) < commit.max_batch_events and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            depth = len(self._queue)
            if depth > self._backlog_peak:
                self._backlog_peak = depth
            n = min(depth, commit.max_batch_events)
            batch = [self._queue.popleft() for _ in range(n)]
            if self._queue:
                self._first_arrival = self._queue[0].accepted
            m.QUEUE_DEPTH.set(len(self._queue))
            return batch

    def _rotate(self) -> None:
        try:
            self.store.rotate_if_needed()
        except Exception:  # rotation must never kill the writer
            log.exception("day rotation failed")

    def _run(self) -> None:
        try:
            self._prepare()
            while True:
                batch = self._take_batch()
                if not batch:
                    if self._stopping:
                        break
                    continue
                self._write(batch)
                del batch  # before a trim, so the last batch's buffers are free too
                self._trim_after_backlog()
        except BaseException as exc:  # a bug: say so loudly and let the service stop (and be restarted)
            self.failed = exc
            with self._cond:
                self._stopping = True
                self.unwritten += len(self._queue)
                self._queue.clear()
            log.critical("writer thread failed; the service stops", exc_info=True)
            if self.on_fatal is not None:
                self.on_fatal(exc)
        finally:
            self.store.close()

    def _prepare(self) -> None:
        """Recovery at start, before any batch; a failure here just leaves the writer blocked."""
        try:
            self.store.prepare()
        except StorageError as err:
            self._set_blocked(err)

    def _write(self, batch: list[Record]) -> None:
        """Commit `batch`, retrying while storage is blocked; give up only at a stop's deadline."""
        drain_deadline: float | None = None
        while True:
            s = self._settings
            self.store.configure(
                s.commit.fsync, s.jsonl.enabled, s.jsonl.fsync, s.jsonl.max_open_files, s.commit.sync_method
            )
            self._rotate()
            t0 = time.perf_counter()
            try:
                if not self.store.ready:
                    self.store.prepare()
                self._check_space(s.storage.min_free_bytes)
                result = self.store.commit(batch)
            except StorageError as err:
                self._set_blocked(err)
                if self._stopping:
                    drain_deadline = drain_deadline or time.monotonic() + s.storage.drain_timeout_s
                    if time.monotonic() >= drain_deadline:
                        self._give_up(batch)
                        return
                retry_s = s.storage.retry_interval_ms / 1000.0
                if self._stopping:  # _wake stays set once stopping; sleep so retries do not spin
                    time.sleep(min(retry_s, 0.1))
                else:
                    self._wake.wait(retry_s)
                continue
            break
        latency = time.perf_counter() - t0
        if self.blocked_reason:
            self._clear_blocked()
        now = time.monotonic()
        m.COMMIT_LATENCY.observe(latency)
        m.BATCH.observe(len(result.written))
        m.BYTES.inc(result.nbytes)
        configs = 0
        for r in result.written:
            configs += r.kind == "config"
            m.EVENT_LATENCY.observe(now - r.accepted)
        m.WRITTEN_EVENT.inc(len(result.written) - configs)
        m.WRITTEN_CONFIG.inc(configs)
        if result.duplicates:
            m.DROPPED.labels("duplicate").inc(len(result.duplicates))
            log.info("%d records already on disk were not rewritten", len(result.duplicates))
        if self.on_commit is not None:
            self.on_commit(result.written)
        self.store.append_jsonl(result.written)

    def _trim_after_backlog(self) -> None:
        """Once a deep backlog has drained, hand the heap pages its buffers used back to the kernel."""
        if self._backlog_peak < TRIM_AFTER_BACKLOG_EVENTS or self._queue:
            return
        now = time.monotonic()
        if now - self._trimmed_at >= TRIM_MIN_INTERVAL_S:
            self._backlog_peak = 0
            self._trimmed_at = now
            if release_free_memory():
                self.memory_trims += 1
                m.MEMORY_TRIMS.inc()

    def _check_space(self, min_free: int) -> None:
        if min_free <= 0:
            return
        try:
            free = fsio.free_bytes(self.store.root)
        except OSError as exc:
            raise StorageError.from_os(exc, self.store.root) from None
        m.DISK_FREE.set(free)
        if free < min_free:
            raise StorageError(
                "disk_full",
                f"disk full: {free} bytes free, below storage.min_free_bytes={min_free}",
                self.store.root,
            )

    def _set_blocked(self, err: StorageError) -> None:
        m.STORAGE_ERRORS.labels(err.reason).inc()
        if self.blocked_reason == err.reason:
            return
        self.blocked_reason = err.reason
        self._blocked_since = time.monotonic()
        m.BLOCKED.set(1)
        m.DISK_FULL.set(1 if err.reason == "disk_full" else 0)
        log.error(
            "artifacts not writable, writing paused (what is written is kept): %s",
            err.message,
            extra={"reason": err.reason, "queued": len(self._queue), "queue_capacity": self.capacity},
        )

    def _clear_blocked(self) -> None:
        log.warning(
            "artifacts writable again: writing resumed",
            extra={
                "reason": self.blocked_reason,
                "blocked_s": round(time.monotonic() - self._blocked_since, 3),
            },
        )
        self.blocked_reason = ""
        m.BLOCKED.set(0)
        m.DISK_FULL.set(0)

    def _give_up(self, batch: list[Record]) -> None:
        with self._cond:
            lost = len(batch) + len(self._queue)
            self._queue.clear()
        self.unwritten += lost
        m.DROPPED.labels("shutdown").inc(lost)
        m.QUEUE_DEPTH.set(0)
        log.error(
            "stopping with the artifacts still not writable: %d events not written",
            lost,
            extra={
                "reason": self.blocked_reason,
                "fix": "fix the storage problem before stopping the service",
            },
        )

    # ---- stop -----------------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> int:
        """Drain the queue (waiting up to storage.drain_timeout_s for a blocked disk) and stop.

        Returns the number of accepted events that could not be written.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._wake.set()
        if self._thread.is_alive():
            limit = timeout if timeout is not None else self._settings.storage.drain_timeout_s + 30.0
            self._thread.join(limit)
            if self._thread.is_alive():
                log.error("writer did not stop within %.1f s", limit)
        return self.unwritten
