"""The artifacts writer in processes of its own: the service encodes, the children do the file work.

Why: a durable event costs ~100 us of Python to turn into its .json and ~170 us (mostly kernel time)
to create, sync and name its two files; in one process all of it shares one GIL and one core. Here
the service keeps what is serial and cheap (decoding, keep policy, the .pb bytes, queues, batching,
blocked state, metrics, acknowledgements, the daily .jsonl through the shared `JsonlSink`), and each
of its writer threads hands its batches to a child of its own through `RemoteStore`. The child
derives each .json from its .pb (the same bytes, `layout.complete_json`) just before the file group
is written, so that work overlaps the previous group's syncfs, and returns it for the .jsonl. The
children commit at the same time: while one waits on the device, another works. Calls go over a
socketpair (multiprocessing.connection framing, pickled tuples: both ends are this module).

- A child dies with the service (PR_SET_PDEATHSIG) and ignores SIGINT/SIGTERM: the service drains
  and then closes it.
- Each child holds `<root>/.writers.lock` (flock) while it runs: shared, except the one running
  start-up recovery, which holds it exclusively. So recovery waits until the writers of a killed
  service are really gone, and two services never write one directory.
- When a child exits unexpectedly, the commit fails with StorageError("writer_process"): the writer
  thread retries its batch (same bytes; a name the dead child left is replaced) in a new child.
  Counters the store increments in a child come back with its replies.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from libs.common.log import setup_logging
from services.rag_logger import fsio, layout
from services.rag_logger import metrics as m
from services.rag_logger.errors import StorageError
from services.rag_logger.layout import Record
from services.rag_logger.memory import release_free_memory
from services.rag_logger.store import ArtifactStore, CommitResult, Recovery, SyncMethod

log = logging.getLogger(__name__)
LOCK_NAME = ".writers.lock"
LOCK_WAIT_S = 10.0  # an old child still finishing a syscall after its service was killed
CLOSE_WAIT_S = 30.0
TRIM_AFTER_EVENTS = 256  # a child trims its heap after a batch this big (the batch's buffers are freed)
TRIM_MIN_INTERVAL_S = 5.0
_PR_SET_PDEATHSIG = 1
# counters ArtifactStore increments; the child sends their increments back with every reply
RELAYED: dict[str, Any] = {"temp_removed": m.TEMP_REMOVED, "pairs_repaired": m.PAIRS_REPAIRED}
Wire = tuple[str, str, str, bytes, bytes, bool, bool]  # a Record: kind, rid, day, pb, js, attempted, done


def _count(counter: Any) -> float:
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                return float(sample.value)
    return 0.0


def _counts() -> dict[str, float]:
    return {name: _count(c) for name, c in RELAYED.items()}


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[2])


class JsonlSink:
    """The daily .jsonl and day rotation, shared by the writers: one appender, under a lock.

    A local ArtifactStore used for nothing else does the work (same code as the in-thread writer).
    """

    def __init__(self, local: ArtifactStore) -> None:
        self.local = local
        self.lock = threading.Lock()

    def configure(self, jsonl: bool, jsonl_fsync: bool, max_open_jsonl: int) -> None:
        st = self.local
        if (st.jsonl, st.jsonl_fsync, st.max_open_jsonl) != (jsonl, jsonl_fsync, max_open_jsonl):
            with self.lock:
                st.configure(st.fsync, jsonl, jsonl_fsync, max_open_jsonl, st.sync_method)

    def rotate_if_needed(self) -> bool:
        if layout.day_of(self.local.clock()) == self.local.today:
            return False
        with self.lock:
            return self.local.rotate_if_needed()

    def append(self, records: Iterable[Record]) -> int:
        with self.lock:
            return self.local.append_jsonl(records)

    def close(self) -> None:
        with self.lock:
            self.local.close()


class RemoteStore:
    """ArtifactStore's interface for one writer thread, carried out by its child (module doc)."""

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
        *,
        index: int = 0,
        jsonl_sink: JsonlSink | None = None,
        log_level: str = "info",
    ) -> None:
        self.root = root
        self.index = index
        self.log_level = log_level
        self.io_threads = io_threads
        self.sink = jsonl_sink or JsonlSink(
            ArtifactStore(root, clock, fsync, jsonl, jsonl_fsync, max_open_jsonl, 1, sync_method)
        )
        self.child_config: tuple[Any, ...] = (fsync, False, False, 1, sync_method, sync_group_events)
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.sent_config: tuple[Any, ...] | None = None
        self.ready = False
        self.restarts = 0
        self.lock_wait_s = LOCK_WAIT_S
        self.service = "rag-logger"  # the log lines' service name (the child does not load the settings)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # ---- the ArtifactStore interface ------------------------------------------------------

    def configure(
        self,
        fsync: bool,
        jsonl: bool,
        jsonl_fsync: bool,
        max_open_jsonl: int,
        sync_method: SyncMethod = "syncfs",
        sync_group_events: int = 512,
    ) -> None:
        """Apply hot settings: the .jsonl ones to the shared sink, the rest to the child's next call."""
        self.sink.configure(jsonl, jsonl_fsync, max_open_jsonl)
        self.child_config = (fsync, False, False, 1, sync_method, sync_group_events)

    def prepare(self, recover: bool = True) -> Recovery:
        """Start (or restart) the child and have it take its lock (and run recovery when asked)."""
        rec: Recovery = self.call(("prepare", recover))
        self.ready = True
        return rec

    def rotate_if_needed(self) -> bool:
        return self.sink.rotate_if_needed()

    def commit(self, batch: list[Record]) -> CommitResult:
        wire = [(r.kind, r.rid, r.day, r.pb, r.js, r.attempted, r.done) for r in batch]
        for r in batch:  # as ArtifactStore does before any I/O: a retry rewrites, it does not dedup
            r.attempted = True
        self.send(("commit", wire))
        written, dups, nbytes, flags, filled = self.recv(batch)
        for r, (attempted, done), js in zip(batch, flags, filled, strict=True):
            r.attempted, r.done = attempted, done
            if js is not None:  # the .json the child derived (needed here for the daily .jsonl)
                r.js = js
        return CommitResult([batch[i] for i in written], [batch[i] for i in dups], nbytes)

    def append_jsonl(self, records: Iterable[Record]) -> int:
        return self.sink.append(records)

    def close(self) -> None:
        """Stop the child (the shared .jsonl is closed by its owner)."""
        if self.conn is None:
            return
        try:
            self.call(("close",))
        except (StorageError, RuntimeError) as exc:
            log.warning("writer process %d did not close cleanly: %s", self.index, exc)
        self.reap(CLOSE_WAIT_S)

    # ---- the child and the calls ----------------------------------------------------------

    def start(self) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_project_root(), env.get("PYTHONPATH", "")) if p)
        fd = str(child_sock.fileno())
        cmd = [sys.executable, "-m", "services.rag_logger.writer", fd, str(os.getpid())]
        try:
            self.proc = subprocess.Popen(
                cmd, pass_fds=[child_sock.fileno()], env=env, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            parent_sock.close()
            raise StorageError(
                "writer_process", f"cannot start the writer process: {exc}", self.root
            ) from None
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.sent_config = None
        init = {
            "root": self.root,
            "io_threads": self.io_threads,
            "log_level": self.log_level,
            "lock_wait_s": self.lock_wait_s,
            "service": self.service,
        }
        self.conn.send(("init", init))
        log.info(
            "writer process started", extra={"pid": self.proc.pid, "writer": self.index, "root": self.root}
        )

    def send(self, msg: tuple[Any, ...]) -> None:
        try:
            if self.conn is None:
                self.start()
            assert self.conn is not None
            if self.sent_config != self.child_config:
                self.conn.send(("configure", self.child_config))
                self.sent_config = self.child_config
            self.conn.send(msg)
        except OSError:
            self.lost()

    def recv(self, batch: list[Record] | None = None) -> Any:
        """The reply to the last request; StorageError when storage failed or the child is gone."""
        assert self.conn is not None
        try:
            status, payload, deltas = self.conn.recv()
        except (EOFError, OSError):
            self.lost()
        for name, delta in deltas.items():
            if delta:
                RELAYED[name].inc(delta)
        if status == "ok":
            return payload
        if status == "storage":
            reason, what, where, flags = payload
            if batch is not None and flags is not None:
                for r, (attempted, done) in zip(batch, flags, strict=True):
                    r.attempted, r.done = attempted, done
            raise StorageError(reason, what, where)
        raise RuntimeError(f"writer process {self.index} failed:\n{payload}")

    def call(self, req: tuple[Any, ...]) -> Any:
        self.send(req)
        return self.recv()

    def lost(self) -> Any:
        code = self.reap(2.0)
        self.restarts += 1
        raise StorageError(
            "writer_process",
            f"writer process {self.index} exited (exit status {code}); its batch is retried in a new one",
            self.root,
        )

    def reap(self, wait_s: float) -> int | None:
        conn, proc = self.conn, self.proc
        self.conn, self.proc, self.ready = None, None, False
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        try:
            return proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


# ---- the child ------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the service died before the prctl
        os._exit(0)
    for sig in (signal.SIGINT, signal.SIGTERM):  # the service decides when the writer stops
        signal.signal(sig, signal.SIG_IGN)


def _lock(root: str, exclusive: bool, wait_s: float = LOCK_WAIT_S) -> int:
    """Hold `<root>/.writers.lock`: shared while writing, exclusive for start-up recovery.

    Recovery must not meet a commit in progress: a writer of a killed service may still be
    finishing a syscall, and another service may be writing the same directory. It waits up to
    `wait_s` for them, then says who holds the lock.
    """
    path = os.path.join(root, LOCK_NAME)
    try:
        os.makedirs(root, exist_ok=True)
        # read-only: a descriptor open for writing would keep the filesystem from a `remount,ro`
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError.from_os(exc, exc.filename or path) from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise StorageError(
                    "locked", f"another rag-logger writer holds {path} (last recovery by pid {holder})", path
                ) from None
            time.sleep(0.05)
    if exclusive:
        with contextlib.suppress(OSError), open(path, "w") as f:  # who holds it, for the error above
            f.write(f"{os.getpid()}\n")
    return fd


class _Child:
    def __init__(self, init: dict[str, Any]) -> None:
        self.root: str = init["root"]
        self.lock_wait_s: float = init["lock_wait_s"]
        self.store = ArtifactStore(self.root, time.time_ns, jsonl=False, io_threads=init["io_threads"])
        self.lock_fd = -1
        self.last: list[Record] = []
        self.trimmed_at = 0.0
        self.reported = _counts()  # relayed counters as last sent to the service

    def handle(self, req: tuple[Any, ...]) -> Any:
        op = req[0]
        if op == "prepare":
            recover: bool = req[1]
            if self.lock_fd < 0:
                self.lock_fd = _lock(self.root, recover, self.lock_wait_s)
            rec = self.store.prepare(recover=recover)
            if recover:  # done: let the other writers (shared holders) in
                fcntl.flock(self.lock_fd, fcntl.LOCK_SH)
            return rec
        if op == "commit":
            batch = [Record(k, rid, day, pb, js, attempted=a, done=d) for k, rid, day, pb, js, a, d in req[1]]
            self.last = batch
            empty = [not r.js for r in batch]
            for r in batch:
                if r.done:  # written by an attempt whose reply was lost: the service needs its .json
                    layout.complete_json(r)
            pos = {id(r): i for i, r in enumerate(batch)}
            res = self.store.commit(batch, fill=layout.complete_json)
            filled = [r.js if e and r.js else None for r, e in zip(batch, empty, strict=True)]
            flags = [(r.attempted, r.done) for r in batch]
            written = [pos[id(r)] for r in res.written]
            return written, [pos[id(r)] for r in res.duplicates], res.nbytes, flags, filled
        raise ValueError(f"unknown request {op!r}")

    def serve(self, conn: Connection) -> None:
        while True:
            try:
                req = conn.recv()
            except EOFError:
                return
            op = req[0]
            if op == "configure":
                self.store.configure(*req[1])
                continue
            reply: tuple[str, Any]
            try:
                if op == "close":
                    self.store.close()
                    reply = ("ok", None)
                else:
                    reply = ("ok", self.handle(req))
            except StorageError as err:
                flags = [(r.attempted, r.done) for r in self.last] if op == "commit" else None
                reply = ("storage", (err.reason, err.what, err.where, flags))
            except Exception:
                reply = ("fatal", traceback.format_exc())
            now = _counts()
            conn.send((*reply, {k: now[k] - self.reported[k] for k in now}))
            self.reported = now
            if op == "close":
                return
            if op == "commit":
                self.after_commit(len(req[1]))

    def after_commit(self, n: int) -> None:
        """After a big batch (a backlog), hand its freed buffers back: RSS would step up otherwise."""
        self.last = []
        now = time.monotonic()
        if n >= TRIM_AFTER_EVENTS and now - self.trimmed_at >= TRIM_MIN_INTERVAL_S:
            self.trimmed_at = now
            release_free_memory()


def main(argv: list[str]) -> int:
    fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    conn = Connection(fd)
    try:
        op, init = conn.recv()
    except EOFError:
        return 0
    assert op == "init"
    setup_logging(init["service"], init["log_level"])
    fsio.raise_fd_limit()
    child = _Child(init)
    try:
        child.serve(conn)
    finally:
        child.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
