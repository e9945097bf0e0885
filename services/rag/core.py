"""The rag service's parts put together from settings: store, artifact follower and query engine.

Shared by the service (`app.py`) and the CLI's direct mode (service down), so both open, repair
and query the index the same way.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from services.rag.config import RagSettings
from services.rag.embedder import Embedder
from services.rag.engine import Engine
from services.rag.errors import IndexError_
from services.rag.ingest import ArtifactFollower, IngestReport
from services.rag.query import Vocabulary
from services.rag.store import CorruptIndex, EventStore, discard
from services.rag.text import AddressRoles

log = logging.getLogger(__name__)


class RagCore:
    """Store + follower + engine for one settings object."""

    def __init__(self, settings: RagSettings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self._embedder = embedder
        self.rebuilt_reason = ""
        self.store = self._open_store(settings.index.dir)
        q = settings.query
        self.engine = Engine(
            self.store,
            self.embedder,
            Vocabulary(q.high_divergence, q.high_score, q.fast_fired, q.ml_disagree),
            q.default_limit,
            q.max_limit,
            q.min_similarity,
        )
        self.follower = ArtifactFollower(
            settings.ingest.artifacts_root,
            self.store,
            lambda texts: self.embedder().embed(texts),
            AddressRoles(),
            settings.ingest.batch_events,
            settings.ingest.full_rescan_s,
        )

    def embedder(self) -> Embedder:
        if self._embedder is None:
            e = self.settings.embedder
            self._embedder = Embedder(e.model_dir, e.threads, e.batch_size, e.max_tokens)
        return self._embedder

    def _open_store(self, directory: Path) -> EventStore:
        ix = self.settings.index
        try:
            try:
                return EventStore(directory, ix.hnsw_min_texts, ix.hnsw_m, ix.hnsw_ef_search)
            except CorruptIndex as exc:
                log.warning(
                    "index corrupt: moved aside, rebuilding from the artifacts", extra={"reason": str(exc)}
                )
                self.rebuilt_reason = str(exc)
                discard(directory)
                return EventStore(directory, ix.hnsw_min_texts, ix.hnsw_m, ix.hnsw_ef_search)
        except OSError as exc:
            raise IndexError_(
                f"cannot open the index: {exc.strerror}",
                str(directory),
                "set index.dir to a writable directory",
            ) from None

    def catch_up(
        self, now_ns: int | None = None, should_stop: Callable[[], bool] | None = None
    ) -> IngestReport:
        """Ingest every complete pair not in the index yet, then snapshot FAISS."""
        report = self.follower.poll(now_ns, should_stop)
        if report.added or self.store.dirty:
            self.store.save()
        return report

    def close(self) -> None:
        self.store.close()


def rebuild(settings: RagSettings, embedder: Embedder | None = None) -> tuple[RagCore, IngestReport, float]:
    """Build a fresh index from the artifacts beside the current one, then swap it in."""
    t0 = time.perf_counter()
    target = settings.index.dir
    staging = target.with_name(f"{target.name}.rebuild-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staged = settings.model_copy(update={"index": settings.index.model_copy(update={"dir": staging})})
    core = RagCore(staged, embedder)
    report = core.catch_up()
    core.close()
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return RagCore(settings, core._embedder), report, time.perf_counter() - t0
