"""The artifacts directory as a durable store: group commit, day rotation, start-up recovery.

Used by exactly one thread (the writer). A commit writes and fdatasyncs every temp file of a
batch (spread over a few I/O threads, since creates and syncs wait on the device), then renames each
into place (.pb, then .json, in batch order) and fsyncs every touched directory once. A crash at any moment leaves whole files only: temp files (removed at
start) and at most one .pb whose .json was not renamed yet (completed from the .pb at start).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from services.rag_logger import fsio, layout
from services.rag_logger import metrics as m
from services.rag_logger.errors import StorageError
from services.rag_logger.layout import Record

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    """What start-up recovery found and fixed."""

    temp_files_removed: int = 0
    pairs_repaired: int = 0
    orphans: int = 0  # .json without .pb: cannot be rebuilt, reported by `verify`


@dataclass
class CommitResult:
    written: list[Record]
    duplicates: list[Record]
    nbytes: int


def recover(root: str, fsync: bool = True) -> Recovery:
    """Remove temp files and complete half pairs (.pb present, .json missing) under `root`.

    Only the writer's own crash leaves these, so this runs before the first write.
    """
    rec = Recovery()
    try:
        days = sorted(d for d in os.listdir(root) if layout.DAY_RE.match(d))
    except FileNotFoundError:
        return rec
    for day in days:
        ddir = os.path.join(root, day)
        try:
            names = set(os.listdir(ddir))
        except NotADirectoryError:
            continue
        changed = False
        for name in sorted(names):
            path = os.path.join(ddir, name)
            if layout.is_tmp(name):
                os.unlink(path)
                rec.temp_files_removed += 1
                changed = True
                continue
            match = layout.ARTIFACT_RE.match(name)
            if not match:
                continue
            kind, rid, ext = match.groups()
            if ext == "pb" and layout.artifact_name(kind, rid, "json") not in names:
                _repair(ddir, kind, rid, path, fsync)
                rec.pairs_repaired += 1
                changed = True
            elif ext == "json" and layout.artifact_name(kind, rid, "pb") not in names:
                rec.orphans += 1
        if changed and fsync:
            fsio.fsync_dir(ddir)
    return rec


def _repair(ddir: str, kind: str, rid: str, pb_path: str, fsync: bool) -> None:
    with open(pb_path, "rb") as f:
        pb = f.read()
    try:
        doc = layout.expected_json(kind, pb)
    except Exception as exc:  # a damaged .pb is verify's to report; recovery leaves it alone
        log.warning("cannot complete pair from %s: %s", pb_path, exc)
        return
    name = layout.artifact_name(kind, rid, "json")
    tmp = os.path.join(ddir, layout.tmp_name(name))
    fd = fsio.write_new(tmp, layout.dumps(doc))
    try:
        if fsync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(ddir, name))
    log.info("completed half pair left by a crash", extra={"path": pb_path})


class ArtifactStore:
    """Durable writes of Records under `root`; see the module docstring for the protocol."""

    def __init__(
        self,
        root: str,
        clock: Callable[[], int],
        fsync: bool = True,
        jsonl: bool = True,
        jsonl_fsync: bool = False,
        max_open_jsonl: int = 4,
        io_threads: int = 8,
    ) -> None:
        self.root = root
        self.clock = clock
        self.fsync = fsync
        self.jsonl = jsonl
        self.jsonl_fsync = jsonl_fsync
        self.max_open_jsonl = max_open_jsonl
        self.io_threads = io_threads
        self._pool: ThreadPoolExecutor | None = None
        self.ready = False
        self.today = layout.day_of(clock())
        self._dirs: set[str] = set()
        self._jsonl: dict[str, int] = {}  # day -> fd opened O_APPEND

    def configure(self, fsync: bool, jsonl: bool, jsonl_fsync: bool, max_open_jsonl: int) -> None:
        """Apply hot settings (called by the writer thread between batches)."""
        self.fsync, self.jsonl, self.jsonl_fsync, self.max_open_jsonl = (
            fsync,
            jsonl,
            jsonl_fsync,
            max_open_jsonl,
        )
        if not jsonl:
            self.close_jsonl()

    def prepare(self) -> Recovery:
        """Create the root and run recovery; StorageError when the directory cannot be used."""
        try:
            os.makedirs(self.root, exist_ok=True)
            rec = recover(self.root, self.fsync)
        except OSError as exc:
            raise StorageError.from_os(exc, exc.filename or self.root) from None
        m.TEMP_REMOVED.inc(rec.temp_files_removed)
        m.PAIRS_REPAIRED.inc(rec.pairs_repaired)
        if rec.temp_files_removed or rec.pairs_repaired or rec.orphans:
            log.warning(
                "recovered the artifacts directory after an unclean stop",
                extra={"root": self.root, **rec.__dict__},
            )
        self.ready = True
        return rec

    def _day_dir(self, day: str) -> str:
        path = os.path.join(self.root, day)
        if path not in self._dirs:
            try:
                os.mkdir(path)
                if self.fsync:
                    fsio.fsync_dir(self.root)
            except FileExistsError:
                pass
            self._dirs.add(path)
        return path

    def rotate_if_needed(self) -> bool:
        """At a UTC day change: close the older days' .jsonl (fsynced), so only today's stays open."""
        today = layout.day_of(self.clock())
        if today == self.today:
            return False
        log.info("day rotation", extra={"from_day": self.today, "to_day": today})
        self.today = today
        for day in [d for d in self._jsonl if d != today]:
            self._close_jsonl_day(day, sync=True)
        m.ROTATIONS.inc()
        return True

    def commit(self, batch: list[Record]) -> CommitResult:
        """Write `batch` durably. On failure no temp file is left and StorageError says why;
        the caller retries the same Records (their bytes are fixed, so a rewrite is identical)."""
        written: list[Record] = []
        dups: list[Record] = []
        seen: set[tuple[str, str]] = set()
        todo: list[Record] = []
        for r in batch:
            if r.done:
                written.append(r)
                continue
            key = (r.kind, r.rid)
            if not r.attempted:
                r.attempted = True
                final_json = os.path.join(self.root, r.day, layout.artifact_name(r.kind, r.rid, "json"))
                if key in seen or os.path.exists(final_json):
                    dups.append(r)
                    r.done = True
                    continue
            seen.add(key)
            todo.append(r)
        if not todo:
            return CommitResult(written, dups, 0)
        jobs: list[tuple[str, str, bytes]] = []  # tmp path, final path, data; in rename order
        touched: set[str] = set()
        try:
            for r in todo:
                ddir = self._day_dir(r.day)
                touched.add(ddir)
                for ext, data in (("pb", r.pb), ("json", r.js)):
                    name = layout.artifact_name(r.kind, r.rid, ext)
                    jobs.append((os.path.join(ddir, layout.tmp_name(name)), os.path.join(ddir, name), data))
        except OSError as exc:
            self._dirs.clear()
            raise StorageError.from_os(exc, exc.filename or self.root) from None
        self._write_temps(jobs)
        renamed = 0
        where = self.root
        try:
            for tmp, final, _data in jobs:
                where = final
                os.rename(tmp, final)
                renamed += 1
            if self.fsync:
                for ddir in sorted(touched):
                    where = ddir
                    fsio.fsync_dir(ddir)
        except OSError as exc:
            _unlink_all(tmp for tmp, _final, _data in jobs[renamed:])
            self._dirs.clear()  # a directory may have vanished; re-check on retry
            raise StorageError.from_os(exc, where) from None
        for r in todo:
            r.done = True
        written.extend(todo)
        return CommitResult(written, dups, sum(r.size for r in todo))

    def _write_temps(self, jobs: list[tuple[str, str, bytes]]) -> None:
        """Create, write and fdatasync every temp file, spread over the I/O threads.

        File creation and fdatasync wait on the device, and they overlap well across threads
        (the GIL is released in the syscalls); each thread takes a contiguous slice of the batch.
        """
        n = len(jobs)
        workers = min(self.io_threads, max(1, n // 8))
        if workers <= 1:
            chunks = [jobs]
        else:
            step = -(-n // workers)
            chunks = [jobs[i : i + step] for i in range(0, n, step)]
        if len(chunks) == 1:
            results = [_write_chunk(chunks[0], self.fsync)]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="rag-logger-io")
            results = list(self._pool.map(_write_chunk, chunks, [self.fsync] * len(chunks)))
        errors = [(err, where) for _created, err, where in results if err is not None]
        if errors:
            _unlink_all(p for created, _err, _where in results for p in created)
            self._dirs.clear()
            err, where = errors[0]
            raise StorageError.from_os(err, where) from None

    def append_jsonl(self, records: Iterable[Record]) -> int:
        """Append committed events to their day's .jsonl; best effort, returns the failures."""
        if not self.jsonl:
            return 0
        by_day: dict[str, list[bytes]] = {}
        for r in records:
            if r.kind == "event":
                by_day.setdefault(r.day, []).append(r.js)
        failures = 0
        for day, lines in by_day.items():
            data = b"\n".join(lines) + b"\n"
            fd = -1
            start = 0
            try:
                fd = self._jsonl_fd(day)
                start = os.lseek(fd, 0, os.SEEK_END)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.jsonl_fsync:
                    os.fdatasync(fd)
            except OSError as exc:
                failures += 1
                m.JSONL_ERRORS.inc()
                log.warning(
                    "cannot append to the daily .jsonl (artifacts are intact): %s",
                    exc.strerror,
                    extra={"day": day, "lines": len(lines)},
                )
                if fd >= 0:
                    with contextlib.suppress(OSError):  # no half line for the next append to glue onto
                        os.ftruncate(fd, start)
                    self._close_jsonl_day(day, sync=False)
        return failures

    def _jsonl_fd(self, day: str) -> int:
        fd = self._jsonl.get(day)
        if fd is None:
            if len(self._jsonl) >= self.max_open_jsonl:
                oldest = min((d for d in self._jsonl if d != self.today), default=next(iter(self._jsonl)))
                self._close_jsonl_day(oldest, sync=False)
            path = os.path.join(self._day_dir(day), layout.jsonl_name(day))
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._jsonl[day] = fd
        return fd

    def _close_jsonl_day(self, day: str, sync: bool) -> None:
        fd = self._jsonl.pop(day, None)
        if fd is None:
            return
        try:
            if sync:
                os.fdatasync(fd)
        except OSError as exc:
            m.JSONL_ERRORS.inc()
            log.warning("cannot fsync the daily .jsonl: %s", exc.strerror, extra={"day": day})
        finally:
            os.close(fd)

    def close_jsonl(self) -> None:
        for day in list(self._jsonl):
            self._close_jsonl_day(day, sync=True)

    def close(self) -> None:
        self.close_jsonl()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _write_chunk(jobs: list[tuple[str, str, bytes]], fsync: bool) -> tuple[list[str], OSError | None, str]:
    """Write one slice of temp files; returns the paths created and the first error (never raises)."""
    created: list[str] = []
    tmp = ""
    try:
        for tmp, _final, data in jobs:
            fd = fsio.write_new(tmp, data)
            created.append(tmp)
            try:
                if fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        if tmp and tmp not in created:
            created.append(tmp)  # write_new may have created it before failing
        return created, exc, tmp
    return created, None, ""


def _unlink_all(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
