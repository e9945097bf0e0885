"""The artifacts directory as a durable store: group commit, day rotation, start-up recovery.

Used by exactly one thread (the writer; in its own process by default, see writer.py). A commit
writes every file of a batch unnamed (O_TMPFILE; named temp files where the filesystem lacks it),
makes their data durable with one syncfs per group of files (or, with `commit.sync_method:
fdatasync`, an fdatasync per file spread over a few I/O threads), then names each (.pb, then .json,
in batch order) and fsyncs every touched directory once. With syncfs, the next group is written
while the previous one's syncfs waits on the device (a helper thread), so the wait does not idle the
writer. Data is on disk before its name, so a crash or power loss at any moment leaves whole files
only: at most one .pb whose .json was not named yet (completed from the .pb at start), and, with
named temp files, temp files (removed at start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from services.rag_logger import fsio, layout
from services.rag_logger import metrics as m
from services.rag_logger.errors import StorageError
from services.rag_logger.layout import Record

log = logging.getLogger(__name__)
SyncMethod = Literal["syncfs", "fdatasync"]
# directory, final path, data, and for the .pb of a record whose duplicate check is done when its
# name is linked (a first attempt, unnamed files): that record
Job = tuple[str, str, bytes, "Record | None"]
Staged = tuple[int, str]  # open descriptor, temp path ("" when the file is unnamed)
InFlight = tuple[list[Staged], list[Job], "Future[None]"]  # a staged group whose syncfs is running


def group_files_for_fd_limit() -> int:
    """Files staged (held open) per syncfs group: a quarter of the descriptor limit, 64..4096."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, soft // 4))


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


def recover_root(root: str, fsync: bool = True) -> Recovery:
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


recover = recover_root  # the name tests and tools know


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
        sync_method: SyncMethod = "syncfs",
        sync_group_events: int = 512,
    ) -> None:
        self.root = root
        self.sync_method: SyncMethod = sync_method
        self.fd_group_limit = group_files_for_fd_limit()
        self.group_files = min(2 * sync_group_events, self.fd_group_limit)
        self.anon = False  # O_TMPFILE usable under root: decided by prepare()
        self.link_empty = False  # linkat(AT_EMPTY_PATH) allowed (CAP_DAC_READ_SEARCH): decided by prepare()
        self.clock = clock
        self.fsync = fsync
        self.jsonl = jsonl
        self.jsonl_fsync = jsonl_fsync
        self.max_open_jsonl = max_open_jsonl
        self.io_threads = io_threads
        self._pool: ThreadPoolExecutor | None = None
        self._sync_pool: ThreadPoolExecutor | None = None
        self._late_dups: list[Record] = []  # duplicates found while naming, in the current commit
        self.ready = False
        self.today = layout.day_of(clock())
        self._dirs: set[str] = set()
        self._jsonl: dict[str, int] = {}  # day -> fd opened O_APPEND

    def configure(
        self,
        fsync: bool,
        jsonl: bool,
        jsonl_fsync: bool,
        max_open_jsonl: int,
        sync_method: SyncMethod = "syncfs",
        sync_group_events: int = 512,
    ) -> None:
        """Apply hot settings (called by the writer thread between batches)."""
        self.fsync, self.jsonl, self.jsonl_fsync, self.max_open_jsonl = (
            fsync,
            jsonl,
            jsonl_fsync,
            max_open_jsonl,
        )
        self.sync_method = sync_method
        self.group_files = min(2 * sync_group_events, self.fd_group_limit)
        if not jsonl:
            self.close_jsonl()

    def prepare(self, recover: bool = True) -> Recovery:
        """Create the root and run recovery (unless another writer of the same root does it);
        StorageError when the directory cannot be used."""
        try:
            os.makedirs(self.root, exist_ok=True)
            rec = recover_root(self.root, self.fsync) if recover else Recovery()
            anon, empty = _anon_files_work(self.root)
        except OSError as exc:
            raise StorageError.from_os(exc, exc.filename or self.root) from None
        m.TEMP_REMOVED.inc(rec.temp_files_removed)
        m.PAIRS_REPAIRED.inc(rec.pairs_repaired)
        if rec.temp_files_removed or rec.pairs_repaired or rec.orphans:
            log.warning(
                "recovered the artifacts directory after an unclean stop",
                extra={"root": self.root, **rec.__dict__},
            )
        if anon != self.anon or not self.ready:
            log.info(
                "staging files %s",
                "unnamed (O_TMPFILE)" if anon else "as named temp files (no O_TMPFILE here)",
                extra={"root": self.root},
            )
        self.anon = anon
        self.link_empty = empty
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
        return self.rotate_to(layout.day_of(self.clock()))

    def rotate_to(self, today: str) -> bool:
        """rotate_if_needed with the day given (by the process that owns the clock)."""
        if today == self.today:
            return False
        log.info("day rotation", extra={"from_day": self.today, "to_day": today})
        self.today = today
        for day in [d for d in self._jsonl if d != today]:
            self._close_jsonl_day(day, sync=True)
        m.ROTATIONS.inc()
        return True

    def commit(self, batch: list[Record], fill: Callable[[Record], object] | None = None) -> CommitResult:
        """Write `batch` durably. On failure no temp file is left and StorageError says why;
        the caller retries the same Records (their bytes are fixed, so a rewrite is identical).

        `fill` completes a Record's bytes just before its group is written (the writer process
        derives the .json there, so that work overlaps the previous group's syncfs).
        """
        written: list[Record] = []
        dups: list[Record] = []
        seen: set[tuple[str, str]] = set()
        todo: list[Record] = []
        exists = os.path.exists
        join = os.path.join
        # unnamed files are checked when linked (EEXIST costs nothing; a lookup before costs ~15 us
        # per event in a large day directory); a rename would replace silently, so check first
        at_link = self.anon
        fresh: set[int] = set()
        for r in batch:
            if r.done:
                written.append(r)
                continue
            key = (r.kind, r.rid)
            if not r.attempted:
                r.attempted = True
                if key in seen or (not at_link and exists(join(self.root, r.day, f"{r.kind}_{r.rid}.json"))):
                    dups.append(r)
                    r.done = True
                    continue
                if at_link:
                    fresh.add(id(r))
            seen.add(key)
            todo.append(r)
        if not todo:
            return CommitResult(written, dups, 0)
        self._late_dups = []
        touched: set[str] = set()
        where = self.root
        syncfd = -1
        try:
            if self.fsync and self.sync_method == "syncfs":
                # opened before the files are written, so syncfs reports their write-back errors
                syncfd = fsio.open_dir(self.root)
            groups = self._groups(todo, touched, fill, fresh)
            if syncfd >= 0:
                self._pipeline(groups, syncfd)
            else:
                for part in groups:
                    self._stage_and_publish(part, syncfd)
            if self.fsync:
                for ddir in sorted(touched):
                    where = ddir
                    fsio.fsync_dir(ddir)
        except OSError as exc:
            self._dirs.clear()  # a directory may have vanished; re-check on retry
            raise StorageError.from_os(exc, exc.filename or where) from None
        finally:
            if syncfd >= 0:
                os.close(syncfd)
        late = {id(r) for r in self._late_dups}
        for r in todo:
            r.done = True
        if late:
            todo = [r for r in todo if id(r) not in late]
            dups.extend(self._late_dups)
        written.extend(todo)
        return CommitResult(written, dups, sum(r.size for r in todo))

    def _groups(
        self, todo: list[Record], touched: set[str], fill: Callable[[Record], object] | None, fresh: set[int]
    ) -> Iterator[list[Job]]:
        """The files to write, a group at a time, in publish order (.pb before its .json)."""
        join = os.path.join
        for lo, hi in _group_bounds(len(todo), max(1, self.group_files // 2)):
            jobs: list[Job] = []
            for r in todo[lo:hi]:
                if fill is not None:
                    fill(r)
                ddir = self._day_dir(r.day)
                touched.add(ddir)
                stem = join(ddir, f"{r.kind}_{r.rid}.")
                jobs.append((ddir, stem + "pb", r.pb, r if id(r) in fresh else None))
                jobs.append((ddir, stem + "json", r.js, None))
            yield jobs

    def _pipeline(self, groups: Iterator[list[Job]], syncfd: int) -> None:
        """syncfs mode: build and write group k+1 while group k's syncfs runs in a helper thread,
        then name group k.

        A group is named only after a syncfs that started once all its files were written has
        returned, so the order data-before-name holds for each group as in the serial scheme.
        """
        inflight: InFlight | None = None
        try:
            for part in groups:
                staged = self._stage(part, False)
                try:
                    if inflight is not None:
                        done, inflight = inflight, None
                        self._publish_synced(*done)
                except BaseException:
                    _discard(staged, 0)
                    raise
                if self._sync_pool is None:
                    self._sync_pool = ThreadPoolExecutor(1, thread_name_prefix="rag-logger-sync")
                inflight = (staged, part, self._sync_pool.submit(fsio.syncfs, syncfd))
            if inflight is not None:
                done, inflight = inflight, None
                self._publish_synced(*done)
        finally:
            if inflight is not None:  # an error above: let the syncfs finish (it uses syncfd), drop the files
                with contextlib.suppress(BaseException):
                    inflight[2].result()
                _discard(inflight[0], 0)

    def _publish_synced(self, staged: list[Staged], jobs: list[Job], synced: Future[None] | None) -> None:
        """Wait for the group's syncfs (when it ran in the helper), then name its files in order."""
        done = [0]
        try:
            if synced is not None:
                synced.result()
            self._name_files(staged, jobs, done)
        finally:
            _discard(staged, done[0])

    def _name_files(self, staged: list[Staged], jobs: list[Job], done: list[int]) -> None:
        """Name the staged files in order (.pb before its .json); `done[0]` counts those handled.

        A first attempt whose .pb name is taken while its .json exists too is a duplicate (a pair
        already on disk): neither file is named, and its unnamed files vanish when closed.
        """
        empty = self.link_empty
        skip = False
        for i, ((fd, tmp), (_ddir, final, _data, rec)) in enumerate(zip(staged, jobs, strict=True)):
            if skip:
                skip = False
            elif rec is not None:
                try:
                    fsio.link_fd(fd, final, empty)
                except FileExistsError:
                    if os.path.exists(final[: -len("pb")] + "json"):
                        rec.done = True
                        self._late_dups.append(rec)
                        skip = True
                    else:  # a .pb alone: complete the pair with ours (same event id)
                        _publish(fd, tmp, final, empty)
            else:
                _publish(fd, tmp, final, empty)
            done[0] = i + 1

    def _stage_and_publish(self, jobs: list[Job], syncfd: int) -> None:
        """Write one group's files unnamed, make their data durable, then name them in order.

        Data is on disk (one syncfs, or an fdatasync per file) before any name appears, so even a
        power loss can only leave whole files; the caller's directory fsync makes the names durable.
        """
        per_file_sync = self.fsync and syncfd < 0
        staged = self._stage(jobs, per_file_sync)
        done = [0]
        try:
            if syncfd >= 0:
                fsio.syncfs(syncfd)
            self._name_files(staged, jobs, done)
        finally:
            _discard(staged, done[0])

    def _stage(self, jobs: list[Job], sync: bool) -> list[Staged]:
        """Create and write every file of `jobs` (fdatasync each when `sync`); all or nothing.

        Per-file fdatasync waits on the device, which overlaps well across the I/O threads (the GIL
        is released in the syscalls); each thread takes a contiguous slice.
        """
        n = len(jobs)
        workers = min(self.io_threads, max(1, n // 8)) if sync else 1
        if workers <= 1:
            results = [_stage_chunk(jobs, self.anon, sync)]
        else:
            step = -(-n // workers)
            chunks = [jobs[i : i + step] for i in range(0, n, step)]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="rag-logger-io")
            results = list(
                self._pool.map(_stage_chunk, chunks, [self.anon] * len(chunks), [sync] * len(chunks))
            )
        staged = [s for chunk, _err in results for s in chunk]
        errors = [err for _chunk, err in results if err is not None]
        if errors:
            _discard(staged, 0)
            raise errors[0]
        return staged

    def append_jsonl(self, records: Iterable[Record]) -> int:
        """Append committed events to their day's .jsonl; best effort, returns the failures."""
        if not self.jsonl:
            return 0
        by_day: dict[str, list[bytes]] = {}
        for r in records:
            if r.kind == "event" and r.js:
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
        for pool in (self._pool, self._sync_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._sync_pool = None


TAIL_EVENTS = 64  # the last group of a long batch: its syncfs is the one nothing overlaps


def _group_bounds(n: int, per: int) -> list[tuple[int, int]]:
    """Group boundaries over n records: groups of `per`, the last one of a multi-group batch small.

    Each group's syncfs overlaps the building of the next; the last one's does not, and neither
    does the directory fsync after it, so a small last group shortens the batch's idle tail.
    """
    if n <= per:
        return [(0, n)]
    cut = n - min(TAIL_EVENTS, per)
    bounds = [(lo, min(lo + per, cut)) for lo in range(0, cut, per)]
    return [*bounds, (cut, n)]


def _anon_files_work(root: str) -> tuple[bool, bool]:
    """Whether O_TMPFILE + linkat work under `root` (not on every filesystem, nor without /proc),
    and whether linkat may name the descriptor directly (AT_EMPTY_PATH, privileged)."""
    try:
        fd = fsio.write_anon(root, b"")
    except OSError:
        return False, False
    probe = os.path.join(root, layout.tmp_name(f"probe-{os.getpid()}"))  # removed at start if we die here
    try:
        for empty in (True, False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe)
            try:
                fsio.link_fd(fd, probe, empty)
            except OSError:
                continue
            os.unlink(probe)
            return True, empty
        return False, False
    finally:
        os.close(fd)


def _stage_chunk(jobs: list[Job], anon: bool, sync: bool) -> tuple[list[Staged], OSError | None]:
    """Write one slice of files (never raises): what was staged, and the first error (its own
    half-made file already removed)."""
    out: list[Staged] = []
    for ddir, final, data, _rec in jobs:
        tmp = ""
        try:
            if anon:
                fd = fsio.write_anon(ddir, data)
            else:
                tmp = os.path.join(ddir, layout.tmp_name(os.path.basename(final)))
                fd = fsio.write_new(tmp, data)
            out.append((fd, tmp))
            if sync:
                os.fdatasync(fd)
        except OSError as exc:
            if tmp and (not out or out[-1][1] != tmp):
                with contextlib.suppress(OSError):  # write_new may have created it before failing
                    os.unlink(tmp)
            if exc.filename is None:
                exc.filename = final
            return out, exc
    return out, None


def _publish(fd: int, tmp: str, final: str, empty_path: bool = False) -> None:
    """Name a staged file: rename the temp file, or link the unnamed one.

    A link does not replace: a name left by an earlier failed attempt of the same batch (or a .pb
    that recovery could not complete) is replaced through a temp name and an atomic rename.
    """
    if tmp:
        os.rename(tmp, final)
        return
    try:
        fsio.link_fd(fd, final, empty_path)
    except FileExistsError:
        tmp = os.path.join(os.path.dirname(final), layout.tmp_name(os.path.basename(final)))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fsio.link_fd(fd, tmp, empty_path)
        os.rename(tmp, final)


def _discard(staged: list[Staged], published: int) -> None:
    """Close every staged descriptor; remove the temp files not renamed (unnamed ones just vanish)."""
    for i, (fd, tmp) in enumerate(staged):
        with contextlib.suppress(OSError):
            os.close(fd)
        if tmp and i >= published:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
