"""Answers: filters from SQLite, ranking by meaning from FAISS, one result shape for every command.

Used by the running service (behind its query socket) and by the CLI directly when the service is
down; both therefore give the same answers. The embedder is loaded on first semantic use only, so
`recent`, `show` and `stats` stay instant.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from libs.common.events import rfc3339
from services.rag.embedder import Embedder
from services.rag.errors import EventNotFound, QueryError
from services.rag.filters import Filters
from services.rag.query import ParsedQuery, Vocabulary, parse_question
from services.rag.store import EventStore


class Engine:
    """Query side of the rag service over one EventStore."""

    def __init__(
        self,
        store: EventStore,
        embedder_factory: Callable[[], Embedder],
        vocab: Vocabulary,
        default_limit: int = 10,
        max_limit: int = 1000,
        min_similarity: float = 0.0,
    ) -> None:
        self.store = store
        self._factory = embedder_factory
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()
        self.vocab = vocab
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.min_similarity = min_similarity

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._factory()
            return self._embedder

    def _limit(self, limit: int | None) -> int:
        n = self.default_limit if limit is None else limit
        if n < 1 or n > self.max_limit:
            raise QueryError(
                f"limit {n} out of range", "--limit", f"use 1..{self.max_limit} (query.max_limit)"
            )
        return n

    def _hit(self, row: dict[str, Any], similarity: float | None) -> dict[str, Any]:
        hit = {
            "event_id": row["event_id"],
            "time": rfc3339(int(row["ts_ns"])),
            "src_ip": row["src_ip"],
            "src_port": row["src_port"],
            "dst_ip": row["dst_ip"],
            "dst_port": row["dst_port"],
            "protocol": row["protocol"],
            "fast_score": round(row["fast_score"], 4),
            "ml_score": round(row["ml_score"], 4),
            "final_score": round(row["final_score"], 4),
            "divergence": round(row["divergence"], 4),
            "classification": row["classification"],
            "decision": row["decision"],
            "attack_type": row["attack_type"],
            "rules": row["rules"],
            "why": row["why"],
        }
        if similarity is not None:
            hit["similarity"] = round(similarity, 4)
        return hit

    def _rank(
        self,
        filters: Filters,
        semantic: str,
        order: str,
        limit: int,
        qvec: np.ndarray | None = None,
        exclude: int | None = None,
    ) -> list[dict[str, Any]]:
        if qvec is None and semantic:
            qvec = self.embedder.embed_one(semantic)
        if qvec is None:
            rowids = self.store.filter_rowids(filters, order, limit)
            rows = self.store.rows(rowids.tolist())
            return [self._hit(rows[r], None) for r in rowids if r in rows]
        pairs = self.store.semantic(qvec, filters, limit, exclude, self.min_similarity)
        rows = self.store.rows([r for r, _s in pairs])
        return [self._hit(rows[r], s) for r, s in pairs if r in rows]

    def query(self, question: str, now_ns: int | None = None, limit: int | None = None) -> dict[str, Any]:
        """A plain-language question: parsed into filters, the remainder ranked by meaning."""
        if not question.strip():
            raise QueryError(
                "empty question", "query", 'ask something, e.g. "blocked port scans from yesterday"'
            )
        t0 = time.perf_counter()
        now = now_ns if now_ns is not None else time.time_ns()
        pq: ParsedQuery = parse_question(question, now, self.vocab, self.store.attack_types())
        n = self._limit(limit if limit is not None else pq.limit)
        hits = self._rank(pq.filters, pq.semantic, pq.order, n)
        return {
            "question": question,
            "parsed": pq.to_dict(),
            "results": hits,
            "took_ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def search(
        self, text: str, limit: int | None = None, filters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Pure semantic search (no parsing of the text), optionally within explicit filters."""
        if not text.strip():
            raise QueryError("empty search text", "search", "give words to search for")
        t0 = time.perf_counter()
        f = Filters.from_dict(filters or {})
        hits = self._rank(f, text, "severity", self._limit(limit))
        return {
            "question": text,
            "parsed": {"filters": f.to_dict(), "semantic": text},
            "results": hits,
            "took_ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def recent(self, limit: int | None = None, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        f = Filters.from_dict(filters or {})
        hits = self._rank(f, "", "recent", self._limit(limit))
        return {
            "question": "recent",
            "parsed": {"filters": f.to_dict()},
            "results": hits,
            "took_ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def similar(self, event_id: str, limit: int | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        found = self.store.by_event_id(event_id)
        if found is None:
            raise EventNotFound(
                f"event {event_id} is not in the index", "similar", "check the id with `mld-rag recent`"
            )
        rowid, _row = found
        qvec = self.store.text_vector(self.store.event_text_id(rowid))
        hits = self._rank(Filters(), "", "severity", self._limit(limit), qvec, exclude=rowid)
        return {
            "question": f"similar {event_id}",
            "parsed": {},
            "results": hits,
            "took_ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def show(self, event_id: str) -> dict[str, Any]:
        """The whole event: its .json artifact when readable, else the indexed fields."""
        found = self.store.by_event_id(event_id)
        if found is None:
            raise EventNotFound(
                f"event {event_id} is not in the index", "show", "check the id with `mld-rag recent`"
            )
        _rowid, row = found
        try:
            doc: dict[str, Any] = json.loads(Path(row["json_path"]).read_text())
        except (OSError, ValueError):
            doc = self._hit(row, None)
            doc["note"] = "artifact file unreadable; indexed fields only"
        doc["why"] = row["why"]
        doc["artifact"] = row["json_path"]
        return doc

    def stats(self) -> dict[str, Any]:
        return self.store.stats()
