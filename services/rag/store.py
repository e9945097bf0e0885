"""The event index: SQLite (events, distinct texts with their vectors, ingested files) + FAISS.

SQLite is the durable truth: one transaction per ingest batch holds the events, their vectors and
the checkpoint of ingested files, so a crash never half-ingests a pair and never ingests one twice.

FAISS (inner product on unit vectors, IndexIDMap2, flat or HNSW by size) holds one vector per
*distinct event text*, id-mapped to the text's id; each event row points at its text. Events with
the same text have the same vector, so a per-event index would hold duplicates and make every
search cost grow with the event count; this way a question costs one search over the distinct
texts. Filters and ordering run on numpy columns of the filterable fields (services.rag.columns),
loaded from SQLite at open and appended on ingest, so any combination of conditions costs about a
millisecond at 100k events; SQLite is only asked for the rows of the answers. The snapshot is saved atomically
(temp file, fsync, rename); when missing, corrupt or behind SQLite it is rebuilt or caught up from
the stored vectors without re-embedding. When SQLite itself is missing or corrupt the caller
rebuilds everything from the artifacts (services.rag.core).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from services.rag.columns import Columns
from services.rag.embedder import DIM
from services.rag.filters import Filters, ip_key, where_sql

log = logging.getLogger(__name__)
# One query searches a small matrix: OpenMP threads only add wake-up cost (and thrash a busy node).
faiss.omp_set_num_threads(1)
SCHEMA_VERSION = "3"
DB_NAME = "events.sqlite"
FAISS_NAME = "vectors.faiss"
COLUMNS = (
    "event_id",
    "ts_ns",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "protocol",
    "fast_score",
    "ml_score",
    "final_score",
    "divergence",
    "classification",
    "verdict",
    "decision",
    "attack_type",
    "rag_required",
    "rules",
    "why",
    "json_path",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS texts (id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, text TEXT NOT NULL,
  vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  rowid INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, ts_ns INTEGER NOT NULL,
  src_ip TEXT, dst_ip TEXT, src_key BLOB, dst_key BLOB, src_port INTEGER, dst_port INTEGER, protocol TEXT,
  fast_score REAL, ml_score REAL, final_score REAL, divergence REAL, classification TEXT, verdict TEXT,
  decision TEXT, attack_type TEXT, rag_required INTEGER, rules TEXT, why TEXT, json_path TEXT,
  text_id INTEGER NOT NULL REFERENCES texts(id));
CREATE INDEX IF NOT EXISTS events_text ON events(text_id, final_score, ts_ns);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts_ns);
CREATE INDEX IF NOT EXISTS events_src ON events(src_key);
CREATE INDEX IF NOT EXISTS events_dst ON events(dst_key);
CREATE INDEX IF NOT EXISTS events_dport ON events(dst_port);
CREATE INDEX IF NOT EXISTS events_final ON events(final_score, divergence, ts_ns);
CREATE INDEX IF NOT EXISTS events_div ON events(divergence, ts_ns);
CREATE INDEX IF NOT EXISTS events_fast_ml ON events(fast_score, ml_score);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, status TEXT NOT NULL, event_id TEXT, reason TEXT,
  size INTEGER, mtime_ns INTEGER);
"""


class CorruptIndex(Exception):
    """The SQLite part cannot be trusted; the index must be rebuilt from the artifacts."""


@dataclass(frozen=True)
class NewEvent:
    """One validated pair ready to store."""

    doc: dict[str, Any]
    text: str
    why: str
    json_path: str
    pb_path: str
    sizes: tuple[int, int]
    mtimes: tuple[int, int]


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventStore:
    """SQLite + FAISS for one index directory; every public method is thread-safe."""

    def __init__(
        self, directory: Path, hnsw_min_texts: int = 50_000, hnsw_m: int = 32, ef_search: int = 128
    ) -> None:
        self.dir = directory
        self.hnsw_min_texts = hnsw_min_texts
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.lock = threading.RLock()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self._open_db()
        self.cols = Columns()
        cur = self.db.execute(f"SELECT {_COLS_SQL} FROM events ORDER BY rowid")
        while rows := cur.fetchmany(20_000):
            self.cols.append(rows)
        self._attack_types = {a for a in self.cols.codes["attack_type"] if a}
        self.index: Any = None
        self.kind = "flat"
        self.dirty = False
        self.last_save = time.monotonic()
        self.faiss_rebuilt = False
        self._load_faiss()

    # ---- opening ---------------------------------------------------------------------------
    def _open_db(self) -> sqlite3.Connection:
        path = self.dir / DB_NAME
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise CorruptIndex(f"{path}: integrity check failed: {ok}")
            db.executescript(SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise CorruptIndex(f"{path}: schema {row[0]}, expected {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise CorruptIndex(f"{path}: {exc}") from None
        return db

    def _new_index(self, n: int) -> Any:
        inner: Any
        if n >= self.hnsw_min_texts:
            inner = faiss.IndexHNSWFlat(DIM, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = self.ef_search
            self.kind = "hnsw"
        else:
            inner = faiss.IndexFlatIP(DIM)
            self.kind = "flat"
        return faiss.IndexIDMap2(inner)

    def _load_faiss(self) -> None:
        """Load the snapshot; rebuild it from stored vectors when absent, unreadable or inconsistent."""
        count = self.text_count()
        path = self.dir / FAISS_NAME
        index: Any = None
        if path.exists():
            try:
                index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
                if index.d != DIM or index.ntotal > count:
                    raise ValueError(f"dim {index.d}, {index.ntotal} vectors for {count} texts")
            except Exception as exc:  # faiss raises RuntimeError; any failure means "rebuild"
                log.warning(
                    "FAISS snapshot unusable, rebuilding it from SQLite",
                    extra={"path": str(path), "error": str(exc)},
                )
                index = None
        if index is None:
            self.index = self._new_index(count)
            self.faiss_rebuilt = True
            self._add_from_db(0)
            self.dirty = True
            return
        self.index = index
        inner: Any = faiss.downcast_index(index.index)
        self.kind = "hnsw" if isinstance(inner, faiss.IndexHNSWFlat) else "flat"
        if self.kind == "hnsw":
            inner.hnsw.efSearch = self.ef_search
        if index.ntotal < count:
            row = self.db.execute("SELECT value FROM meta WHERE key='faiss_max_text_id'").fetchone()
            self._add_from_db(int(row[0]) if row else 0)
            if self.index.ntotal != count:  # snapshot and meta disagree: start over from SQLite
                self.index = self._new_index(count)
                self._add_from_db(0)
            self.dirty = True

    def _add_from_db(self, after_id: int) -> None:
        cur = self.db.execute("SELECT id, vec FROM texts WHERE id > ? ORDER BY id", (after_id,))
        while True:
            rows = cur.fetchmany(20_000)
            if not rows:
                break
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
            self.index.add_with_ids(vecs, ids)

    # ---- writing ---------------------------------------------------------------------------
    def known_files(self) -> set[str]:
        with self.lock:
            return {r[0] for r in self.db.execute("SELECT path FROM files WHERE status='ok'")}

    def damaged_files(self) -> dict[str, tuple[int, int]]:
        with self.lock:
            return {
                r[0]: (r[1], r[2])
                for r in self.db.execute("SELECT path, size, mtime_ns FROM files WHERE status='damaged'")
            }

    def text_ids(self, hashes: Iterable[str]) -> dict[str, int]:
        """Ids of the texts already embedded (so they are not embedded again)."""
        out: dict[str, int] = {}
        hs = list(dict.fromkeys(hashes))
        with self.lock:
            for i in range(0, len(hs), 500):
                chunk = hs[i : i + 500]
                q = f"SELECT hash, id FROM texts WHERE hash IN ({','.join('?' * len(chunk))})"
                out.update(dict(self.db.execute(q, chunk).fetchall()))
        return out

    def add(self, events: Sequence[NewEvent], embed: Callable[[list[str]], np.ndarray]) -> int:
        """Store events (skipping ids already held) with their checkpoint rows; returns how many were new."""
        if not events:
            return 0
        hashes = [text_hash(e.text) for e in events]
        have = self.text_ids(hashes)
        missing = {h: e.text for h, e in zip(hashes, events, strict=True) if h not in have}
        vecs = embed(list(missing.values())) if missing else np.zeros((0, DIM), dtype=np.float32)
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                new_ids: list[int] = []
                for (h, text), vec in zip(missing.items(), vecs, strict=True):
                    cur = self.db.execute(
                        "INSERT INTO texts (hash, text, vec) VALUES (?,?,?)",
                        (h, text, np.asarray(vec, dtype=np.float32).tobytes()),
                    )
                    assert cur.lastrowid is not None
                    have[h] = cur.lastrowid
                    new_ids.append(cur.lastrowid)
                added = 0
                new_rows: list[tuple[Any, ...]] = []
                for e, h in zip(events, hashes, strict=True):
                    d = e.doc
                    cur = self.db.execute(
                        "INSERT OR IGNORE INTO events (event_id, ts_ns, src_ip, dst_ip, src_key, dst_key, src_port,"
                        " dst_port, protocol, fast_score, ml_score, final_score, divergence, classification, verdict,"
                        " decision, attack_type, rag_required, rules, why, json_path, text_id)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            d["event_id"],
                            d["_ts_ns"],
                            d["src_ip"],
                            d["dst_ip"],
                            _key(d["src_ip"]),
                            _key(d["dst_ip"]),
                            d["src_port"],
                            d["dst_port"],
                            d["protocol"],
                            d["fast_score"],
                            d["ml_score"],
                            d["final_score"],
                            d["divergence"],
                            d["classification"],
                            d["verdict"],
                            d["decision"],
                            d.get("attack_type", ""),
                            int(bool(d.get("rag_required"))),
                            "," + ",".join(d.get("rules") or []) + ",",
                            e.why,
                            e.json_path,
                            have[h],
                        ),
                    )
                    if cur.rowcount == 1:
                        added += 1
                        new_rows.append(
                            (
                                cur.lastrowid,
                                d["_ts_ns"],
                                d["fast_score"],
                                d["ml_score"],
                                d["final_score"],
                                d["divergence"],
                                d["src_port"],
                                d["dst_port"],
                                d["protocol"],
                                d["classification"],
                                d["verdict"],
                                d["decision"],
                                d.get("attack_type", ""),
                                bool(d.get("rag_required")),
                                _key(d["src_ip"]),
                                _key(d["dst_ip"]),
                                have[h],
                            )
                        )
                    if d.get("attack_type"):
                        self._attack_types.add(str(d["attack_type"]))
                self.db.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?, 'ok', ?, '', ?, ?)",
                    [
                        (path, e.doc["event_id"], size, mtime)
                        for e in events
                        for path, size, mtime in (
                            (e.json_path, e.sizes[0], e.mtimes[0]),
                            (e.pb_path, e.sizes[1], e.mtimes[1]),
                        )
                    ],
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.cols.append(new_rows)
            if new_ids:
                self.index.add_with_ids(np.asarray(vecs, dtype=np.float32), np.array(new_ids, dtype=np.int64))
                self.dirty = True
            return added

    def mark_damaged(self, items: Sequence[tuple[str, str, int, int]]) -> None:
        """Record (path, reason, size, mtime_ns) so a damaged pair is reported once, not every poll."""
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, 'damaged', NULL, ?, ?, ?)", items)

    def maybe_save(self, interval_s: float) -> bool:
        if self.dirty and time.monotonic() - self.last_save >= interval_s:
            self.save()
            return True
        return False

    def save(self) -> None:
        """Atomic FAISS snapshot (switching flat → HNSW once the size calls for it), then its rowid mark."""
        with self.lock:
            if self.kind == "flat" and self.index.ntotal >= self.hnsw_min_texts:
                self.index = self._new_index(self.index.ntotal)
                self._add_from_db(0)
            data = faiss.serialize_index(self.index)
            max_id = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM texts").fetchone()[0]
            self.dirty = False
            self.last_save = time.monotonic()
        _atomic_bytes(self.dir / FAISS_NAME, data.tobytes())
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('faiss_max_text_id', ?)", (str(max_id),))
            # Keep the planner's statistics fresh so filters pick the selective index.
            self.db.execute("PRAGMA optimize")

    def close(self) -> None:
        with self.lock:
            if self.dirty:
                self.save()
            self.db.close()

    # ---- reading ---------------------------------------------------------------------------
    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def text_count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM texts").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        with self.lock:
            db = self.db
            first_last = db.execute("SELECT MIN(ts_ns), MAX(ts_ns) FROM events").fetchone()
            return {
                "events": self.count(),
                "distinct_texts": self.text_count(),
                "damaged_files": db.execute("SELECT COUNT(*) FROM files WHERE status='damaged'").fetchone()[
                    0
                ],
                "index_kind": self.kind,
                "index_vectors": int(self.index.ntotal),
                "first_ts_ns": first_last[0],
                "last_ts_ns": first_last[1],
                "by_classification": dict(
                    db.execute("SELECT classification, COUNT(*) FROM events GROUP BY 1").fetchall()
                ),
                "by_decision": dict(
                    db.execute("SELECT decision, COUNT(*) FROM events GROUP BY 1").fetchall()
                ),
                "by_attack_type": dict(
                    db.execute("SELECT attack_type, COUNT(*) FROM events GROUP BY 1").fetchall()
                ),
                "index_dir": str(self.dir),
            }

    def attack_types(self) -> set[str]:
        """Attack types present in the index (kept in memory: asked on every question)."""
        with self.lock:
            return set(self._attack_types)

    def _mask(self, f: Filters, exclude: int | None = None) -> np.ndarray:
        m = self.cols.mask(f)
        if f.rules:  # rare (not produced by the parser): ask SQLite, then intersect
            where, params = where_sql(Filters(rules=f.rules))
            ids = [r[0] for r in self.db.execute(f"SELECT rowid FROM events {where}", params)]
            m &= np.isin(self.cols.arrays()["rowid"], np.asarray(ids, dtype=np.int64))
        if exclude is not None:
            m &= self.cols.arrays()["rowid"] != exclude
        return m

    def filter_rowids(self, f: Filters, order: str = "severity", limit: int | None = None) -> np.ndarray:
        """Row ids of the events meeting `f`, in `order` (severity, divergence, recent, oldest)."""
        if order not in _ORDER:
            raise ValueError(f"unknown order {order!r}")
        with self.lock:
            m = self._mask(f)
            rowids, _ = self.cols.top(m, order, limit or int(m.sum()) or 1)
        return rowids

    def rows(self, rowids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        ids = [int(r) for r in rowids]
        with self.lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                q = f"SELECT rowid, {', '.join(COLUMNS)} FROM events WHERE rowid IN ({','.join('?' * len(chunk))})"
                for row in self.db.execute(q, chunk):
                    out[row[0]] = _row_dict(row[1:])
        return out

    def by_event_id(self, event_id: str) -> tuple[int, dict[str, Any]] | None:
        with self.lock:
            row = self.db.execute(
                f"SELECT rowid, {', '.join(COLUMNS)} FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
        return (row[0], _row_dict(row[1:])) if row else None

    def event_text_id(self, rowid: int) -> int:
        with self.lock:
            return int(self.db.execute("SELECT text_id FROM events WHERE rowid = ?", (rowid,)).fetchone()[0])

    def text_vector(self, text_id: int) -> np.ndarray:
        with self.lock:
            return np.asarray(self.index.reconstruct(int(text_id)), dtype=np.float32)

    def rank_texts(self, qvec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k distinct texts nearest to `qvec`: (text id, cosine), best first."""
        q = np.asarray(qvec, dtype=np.float32).reshape(1, DIM)
        with self.lock:
            n = self.index.ntotal
            if n == 0:
                return []
            k = min(k, n)
            params = (
                faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))  # type: ignore[attr-defined]
                if self.kind == "hnsw"
                else None
            )
            dist, ids = self.index.search(q, k, params=params)
        return [(int(i), float(d)) for i, d in zip(ids[0], dist[0], strict=True) if i >= 0]

    def semantic(
        self,
        qvec: np.ndarray,
        f: Filters,
        limit: int,
        exclude: int | None = None,
        min_similarity: float = -1.0,
        max_texts: int = 4096,
    ) -> list[tuple[int, float]]:
        """Events meeting `f`, by similarity of their text (rounded to 3 places), then severity, recency."""
        ranked = self.rank_texts(qvec, max_texts)
        with self.lock:
            a = self.cols.arrays()
            if not ranked or len(a["rowid"]) == 0:
                return []
            tsim = np.full(int(max(a["text_id"].max(), max(t for t, _ in ranked))) + 1, -np.inf)
            for tid, sim in ranked:
                if sim >= min_similarity:
                    tsim[tid] = sim
            rowids, sims = self.cols.top(self._mask(f, exclude), "similarity", limit, tsim[a["text_id"]])
        return [(int(r), float(x)) for r, x in zip(rowids, sims, strict=True)]


_COLS_SQL = (
    "rowid, ts_ns, fast_score, ml_score, final_score, divergence, src_port, dst_port, protocol, classification,"
    " verdict, decision, attack_type, rag_required, src_key, dst_key, text_id"
)
_ORDER = {
    "severity": "final_score DESC, divergence DESC, ts_ns DESC",
    "divergence": "divergence DESC, ts_ns DESC",
    "recent": "ts_ns DESC",
    "oldest": "ts_ns ASC",
}


_KEYS: dict[str, bytes | None] = {}


def _key(addr: str) -> bytes | None:
    """ip_key, cached (ingest meets the same addresses again and again)."""
    if addr in _KEYS:
        return _KEYS[addr]
    try:
        key: bytes | None = ip_key(addr)
    except ValueError:
        key = None
    if len(_KEYS) >= 65_536:
        _KEYS.clear()
    _KEYS[addr] = key
    return key


def _row_dict(row: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(COLUMNS, row, strict=True))
    d["rules"] = [r for r in str(d["rules"] or "").split(",") if r]
    d["rag_required"] = bool(d["rag_required"])
    return d


def open_store(directory: Path, **kw: Any) -> EventStore:
    return EventStore(directory, **kw)


def discard(directory: Path) -> None:
    """Move a corrupt index directory aside (kept for inspection as <dir>.corrupt-<time>)."""
    if directory.exists():
        aside = directory.with_name(f"{directory.name}.corrupt-{int(time.time())}")
        with contextlib.suppress(OSError):
            shutil.rmtree(aside)
        directory.rename(aside)
