"""The running rag service: catch up on the artifacts, follow new pairs, answer questions.

Wiring only: the settings object, the index lock, metrics, the query socket and the ingest loop.
The main thread ingests (it alone writes the index); the socket thread answers (reads under the
store's lock). SIGTERM stops both, and the FAISS snapshot is written before exit.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import time
from pathlib import Path
from typing import IO, Any

from libs.common.cli import package_version
from libs.common.lifecycle import StopFlag
from libs.common.log import setup_logging
from libs.common.metrics import build_info, start_metrics_server
from libs.watcher import ConfigRuntime
from services.rag.config import SERVICE, RagSettings
from services.rag.core import RagCore, rebuild
from services.rag.errors import IndexError_
from services.rag.ingest import IngestReport
from services.rag.metrics import damage_reason, rag_metrics
from services.rag.server import QueryServer

log = logging.getLogger(__name__)


def lock_index(directory: Path) -> IO[str]:
    """Hold `<index>/../<name>.lock` so a second writer (service or CLI direct mode) cannot open it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    path = directory.with_name(directory.name + ".lock")
    fh = open(path, "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise IndexError_(
            "the index is in use by another rag process",
            str(path),
            "stop the other `mld-rag run`, or query through it (without --direct)",
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


class RagService:
    """One running rag service; `run()` blocks until `stop` is set."""

    def __init__(self, settings: RagSettings, stop: StopFlag | None = None) -> None:
        self.settings = settings
        self.stop = stop or StopFlag()
        self.metrics = rag_metrics()
        self.lock = lock_index(settings.index.dir)
        self.core = RagCore(settings)
        if self.core.rebuilt_reason:
            self.metrics.index_rebuilds.labels("corrupt").inc()
        self.rebuild_requests: queue.Queue[queue.Queue[Any]] = queue.Queue()
        self.server: QueryServer | None = None

    def handlers(self) -> dict[str, Any]:
        def engine() -> Any:
            return self.core.engine

        return {
            "ping": lambda a: {"pid": os.getpid(), "events": self.core.store.count()},
            "query": lambda a: engine().query(str(a.get("question", "")), a.get("now_ns"), a.get("limit")),
            "search": lambda a: engine().search(str(a.get("text", "")), a.get("limit"), a.get("filters")),
            "recent": lambda a: engine().recent(a.get("limit"), a.get("filters")),
            "similar": lambda a: engine().similar(str(a.get("event_id", "")), a.get("limit")),
            "show": lambda a: engine().show(str(a.get("event_id", ""))),
            "stats": lambda a: dict(engine().stats(), service_pid=os.getpid()),
            "rebuild": self._request_rebuild,
        }

    def _request_rebuild(self, _args: dict[str, Any]) -> Any:
        reply: queue.Queue[Any] = queue.Queue(1)
        self.rebuild_requests.put(reply)
        return reply.get(timeout=3600)

    def _observe(self, cmd: str, result: str, seconds: float) -> None:
        self.metrics.queries.labels(cmd, result).inc()
        if result == "ok":
            self.metrics.query_seconds.labels(cmd).observe(seconds)

    def _account(self, report: IngestReport, seconds: float) -> None:
        m = self.metrics
        if report.added:
            m.events_ingested.inc(report.added)
            m.ingest_pass_seconds.observe(seconds)
        if report.duplicates:
            m.duplicates.inc(report.duplicates)
        for _path, reason in report.damaged:
            m.pairs_damaged.labels(damage_reason(reason)).inc()
        for lag in report.lag_s:
            m.ingest_lag_seconds.observe(lag)

    def _refresh_gauges(self) -> None:
        st = self.core.store
        self.metrics.index_events.set(st.count())
        self.metrics.index_texts.set(int(st.index.ntotal))

    def _do_rebuild(self, reply: queue.Queue[Any]) -> None:
        old = self.core
        old.close()
        try:
            self.core, report, seconds = rebuild(self.settings, old._embedder)
            self.metrics.index_rebuilds.labels("requested").inc()
            reply.put({"events": report.added, "damaged": len(report.damaged), "seconds": round(seconds, 3)})
        except Exception as exc:
            log.exception("rebuild failed; reopening the previous index")
            self.core = RagCore(self.settings, old._embedder)
            reply.put({"error": str(exc)})

    def update_settings(self, new: RagSettings) -> None:
        """Apply the hot fields live (a libs.watcher step): the loop reads `self.settings` each turn;
        the follower, store and engine keep copies of a few numbers, updated here."""
        from services.rag.query import Vocabulary

        core, q = self.core, new.query
        core.follower.batch_events = new.ingest.batch_events
        core.follower.full_rescan_s = new.ingest.full_rescan_s
        core.store.ef_search = new.index.hnsw_ef_search
        core.engine.vocab = Vocabulary(q.high_divergence, q.high_score, q.fast_fired, q.ml_disagree)
        core.engine.default_limit, core.engine.max_limit = q.default_limit, q.max_limit
        core.engine.min_similarity = q.min_similarity
        core.settings = new
        self.settings = new

    def _pause(self, start: float) -> None:
        """Wait one poll interval, re-reading it every 0.25 s: an interval shortened live (etcd)
        takes effect within that, not after a long interval set earlier has run out."""
        while not self.stop.is_set():
            left = self.settings.ingest.poll_interval_ms / 1000 - (time.monotonic() - start)
            if left <= 0:
                return
            self.stop.wait(min(left, 0.25))

    def run(self) -> None:
        s = self.settings
        build_info(SERVICE, package_version(), s.node_id)
        start_metrics_server(s.metrics.host, s.metrics.port)
        self.core.embedder()  # load the model now, so the first question is not slow
        t0 = time.perf_counter()
        report = self.core.catch_up(should_stop=self.stop.is_set)
        self._account(report, time.perf_counter() - t0)
        log.info(
            "caught up on the artifacts",
            extra={
                "added": report.added,
                "damaged": len(report.damaged),
                "events": self.core.store.count(),
                "seconds": round(time.perf_counter() - t0, 3),
            },
        )
        self._refresh_gauges()
        self.server = QueryServer(s.query.endpoint, self.handlers(), self.stop, self._observe)
        self.server.start()
        log.info("answering questions", extra={"endpoint": s.query.endpoint})
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                report = self.core.follower.poll(should_stop=self.stop.is_set)
                self._account(report, time.perf_counter() - t0)
                if report.added:
                    self._refresh_gauges()
                if self.core.store.maybe_save(self.settings.index.save_interval_s):
                    self.metrics.index_saves.inc()
                try:
                    reply = self.rebuild_requests.get_nowait()
                except queue.Empty:
                    pass
                else:
                    self._do_rebuild(reply)
                self._pause(time.monotonic())
        finally:
            self.stop.set()
            if self.server is not None:
                self.server.join()
            self.core.close()
            self.metrics.index_saves.inc()
            self.lock.close()
            log.info("stopped", extra={"reason": self.stop.reason})


def run_service(settings: RagSettings, runtime: ConfigRuntime[RagSettings] | None = None) -> None:
    """Run until SIGTERM; `runtime` (libs.watcher, settings from etcd) gets the live-update step."""
    setup_logging(SERVICE, settings.log_level)
    stop = StopFlag()
    stop.install_signal_handlers()
    service = RagService(settings, stop)
    if runtime is not None:
        runtime.add_step(lambda _old, new: service.update_settings(new))
    service.run()
