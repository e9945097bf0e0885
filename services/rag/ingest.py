"""Following the artifacts directory: find complete pairs, validate them, hand them to the store.

A pair is complete when `event_<id>.pb` and `event_<id>.json` both exist (the rag-logger renames
each into place atomically). Temp files (leading '.' or '.tmp') and other files are ignored. A
day directory is listed again only when its mtime moved (a rename into it changes it), plus a
full re-listing every `full_rescan_s` as a safety net. A damaged pair is recorded with its reason
and reported once; it is looked at again only if one of its files changes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from ml_defender.v1 import detection_pb2
from services.rag.store import EventStore, NewEvent
from services.rag.text import AddressRoles, event_text, why_line

log = logging.getLogger(__name__)
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PAIR_RE = re.compile(r"^event_([0-9A-Za-z-]{1,64})\.(pb|json)$")
REQUIRED = (
    "event_id",
    "timestamp",
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
    "decision",
)


@dataclass
class IngestReport:
    """What one pass did; the service turns it into metrics."""

    added: int = 0
    duplicates: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    pending: int = 0


class Damaged(Exception):
    pass


def parse_ts(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def load_pair(json_path: str, pb_path: str, event_id: str) -> dict[str, Any]:
    """The event's JSON form, checked against its .pb twin; raises Damaged with the reason."""
    try:
        raw_json = _read_bytes(json_path)
        raw_pb = _read_bytes(pb_path)
    except OSError as exc:
        raise Damaged(f"unreadable: {exc.strerror}") from None
    try:
        doc = json.loads(raw_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Damaged(f".json is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise Damaged(".json is not an object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise Damaged(f".json lacks {', '.join(missing)}")
    ev = detection_pb2.DetectionEvent()
    try:
        ev.ParseFromString(raw_pb)
    except DecodeError as exc:
        raise Damaged(f".pb does not decode as DetectionEvent ({exc})") from None
    if not ev.event_id:
        raise Damaged(".pb has no event_id (empty or not a DetectionEvent)")
    if not (doc["event_id"] == ev.event_id == event_id):
        raise Damaged(f"ids disagree: name {event_id}, .json {doc['event_id']}, .pb {ev.event_id}")
    if abs(float(doc["final_score"]) - ev.final_score) > 1e-5:
        raise Damaged(f"final_score disagrees: .json {doc['final_score']}, .pb {ev.final_score:.6f}")
    try:
        doc["_ts_ns"] = parse_ts(str(doc["timestamp"]))
    except ValueError:
        raise Damaged(f"timestamp {doc['timestamp']!r} is not RFC 3339") from None
    return doc


class ArtifactFollower:
    """Incremental scanner of `<root>/YYYY-MM-DD/` feeding an EventStore."""

    def __init__(
        self,
        root: Path,
        store: EventStore,
        embed: Callable[[list[str]], np.ndarray],
        roles: AddressRoles | None = None,
        batch_events: int = 512,
        full_rescan_s: float = 60.0,
    ) -> None:
        self.root = root
        self.store = store
        self.embed = embed
        self.roles = roles or AddressRoles()
        self.batch_events = batch_events
        self.full_rescan_s = full_rescan_s
        self.done: set[str] = store.known_files()
        self.damaged: dict[str, tuple[int, int]] = store.damaged_files()
        self.dir_mtimes: dict[str, int] = {}
        self.last_full = 0.0

    def _changed_dirs(self) -> list[str]:
        try:
            days = [e for e in os.scandir(self.root) if e.is_dir() and DAY_RE.match(e.name)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot list artifacts root", extra={"path": str(self.root), "error": exc.strerror})
            return []
        full = time.monotonic() - self.last_full >= self.full_rescan_s
        if full:
            self.last_full = time.monotonic()
        out = []
        for d in sorted(days, key=lambda e: e.name):
            try:
                m = d.stat().st_mtime_ns
            except OSError:
                continue
            if full or self.dir_mtimes.get(d.name) != m:
                out.append((d.path, d.name, m))
        # Record the mtime seen *before* listing: a rename during the listing moves it again.
        for _p, name, m in out:
            self.dir_mtimes[name] = m
        return [p for p, _n, _m in out]

    def poll(self, now_ns: int | None = None, should_stop: Callable[[], bool] | None = None) -> IngestReport:
        """One pass: ingest every complete pair not seen yet (a long catch-up ends early on a stop)."""
        report = IngestReport()
        batch: list[NewEvent] = []
        for day in self._changed_dirs():
            try:
                names = os.listdir(day)
            except OSError:
                continue
            kinds: dict[str, set[str]] = {}
            for name in names:
                m = PAIR_RE.match(name)
                if m:
                    kinds.setdefault(m.group(1), set()).add(m.group(2))
            for eid in sorted(kinds):
                js, pb = f"{day}/event_{eid}.json", f"{day}/event_{eid}.pb"
                if js in self.done:
                    continue
                if kinds[eid] != {"pb", "json"}:
                    report.pending += 1
                    continue
                item = self._read(eid, js, pb, report, now_ns)
                if item is not None:
                    batch.append(item)
                if len(batch) >= self.batch_events:
                    self._flush(batch, report)
                    batch = []
                    if should_stop is not None and should_stop():
                        # What is not flushed stays unrecorded and is read again on the next start.
                        self.dir_mtimes.clear()
                        return report
        self._flush(batch, report)
        return report

    def _read(self, eid: str, js: str, pb: str, report: IngestReport, now_ns: int | None) -> NewEvent | None:
        try:
            st_j, st_p = os.stat(js), os.stat(pb)
        except OSError:
            return None
        sig = (st_j.st_size + st_p.st_size, st_j.st_mtime_ns ^ st_p.st_mtime_ns)
        if self.damaged.get(js) == sig:
            return None
        try:
            doc = load_pair(js, pb, eid)
        except Damaged as exc:
            self.damaged[js] = sig
            report.damaged.append((js, str(exc)))
            self.store.mark_damaged([(js, str(exc), sig[0], sig[1])])
            log.warning(
                "damaged artifact pair skipped",
                extra={
                    "path": js,
                    "reason": str(exc),
                    "fix": "rewrite or remove the pair; it is retried when it changes",
                },
            )
            return None
        lag_ref = now_ns if now_ns is not None else time.time_ns()
        logged = (doc.get("stage_ns") or {}).get("logged") or 0
        if logged:
            report.lag_s.append(max(0.0, (lag_ref - int(logged)) / 1e9))
        return NewEvent(
            doc=doc,
            text=event_text(doc, self.roles),
            why=why_line(doc),
            json_path=js,
            pb_path=pb,
            sizes=(st_j.st_size, st_p.st_size),
            mtimes=(st_j.st_mtime_ns, st_p.st_mtime_ns),
        )

    def _flush(self, batch: list[NewEvent], report: IngestReport) -> None:
        if not batch:
            return
        added = self.store.add(batch, self.embed)
        report.added += added
        report.duplicates += len(batch) - added
        for e in batch:
            self.done.add(e.json_path)
            self.done.add(e.pb_path)
            self.damaged.pop(e.json_path, None)
