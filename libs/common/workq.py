"""At-least-once work distribution over ZeroMQ: sensor -> detector workers, no message lost when
a worker dies.

PUSH/PULL has no acknowledgement: a worker that is SIGKILLed loses what it had taken off the wire.
This is the ZeroMQ guide's load-balancing broker with credit-based flow control and Paranoid
Pirate heartbeats (chapters 3, 4 and 7), reduced to one sender and N workers:

- The sender (`WorkSender`, binds) is a ROUTER. It keeps every message until a worker acknowledges
  it, gives a worker at most `reliable.window` unacknowledged messages (its credit, announced in
  READY) and sends each message to the worker with the most free credit, so the free worker gets
  the work. A worker that says BYE, becomes unreachable, or is silent for `peer_timeout_ms` is
  dead: its unacknowledged messages go to the front of the queue, for the others.
- A worker (`WorkReceiver`, connects) is one DEALER per sender (a detector pulls from every site's
  sensor). It announces READY, heartbeats from its own loop (a hung worker stops heartbeating),
  and acknowledges a message `ack_delay_ms` after the caller said it is done (`done()`), i.e.
  after its results were handed to the downstream sockets and ZeroMQ had time to flush them.
- A message can therefore be handled twice (a slow worker declared dead, then finishing): the
  message carries its id (`batch_id` of a FlowBatch) and the detector derives its events' ids from
  it (`event_id_for`), so the rag-logger writes one artifact and the firewall one ban.
- A sender restart forgets every worker: a worker heard from without READY is told RESET and
  announces itself again. Dead TCP connections are found by ZMTP heartbeats and reconnected.

Frames: worker -> sender `[HDR, READY, window, name]`, `[HDR, ACK, id...]`, `[HDR, HB]`,
`[HDR, BYE]`; sender -> worker `[HDR, BATCH, id, type name, payload]`, `[HDR, RESET]`.
CURVE works as on every SocketSettings socket (the ROUTER is the server).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge

from libs.common.errors import ConfigError
from libs.common.events import uuid7
from libs.common.metrics import transport_metrics
from libs.common.zmqio import Puller, Pusher, ReliableSettings, SocketSettings, _open, decode

log = logging.getLogger(__name__)
HDR = b"MLDQ1"
READY, ACK, HB, BYE, BATCH, RESET = b"READY", b"ACK", b"HB", b"BYE", b"BATCH", b"RESET"
_lock = threading.Lock()


@dataclass(frozen=True)
class WorkqMetrics:
    workers: Gauge
    unacked: Gauge
    redelivered: Counter
    lost_workers: Counter


_metrics: dict[str, WorkqMetrics] = {}


def workq_metrics(service: str) -> WorkqMetrics:
    """`mld_<service>_zmq_*` of the reliable sender, created on first use."""
    name = service.replace("-", "_")
    with _lock:
        if name not in _metrics:
            _metrics[name] = WorkqMetrics(
                workers=Gauge(f"mld_{name}_zmq_workers", "Workers with credit (READY, alive)", ["endpoint"]),
                unacked=Gauge(
                    f"mld_{name}_zmq_unacked_messages",
                    "Messages kept until a worker acknowledges them (queued + in flight)",
                    ["endpoint"],
                ),
                redelivered=Counter(
                    f"mld_{name}_zmq_redelivered_messages",
                    "Messages sent again because their worker died before acknowledging them",
                    ["endpoint"],
                ),
                lost_workers=Counter(
                    f"mld_{name}_zmq_lost_workers",
                    "Workers given up: silent (no heartbeat), bye (stopped), unreachable",
                    ["endpoint", "reason"],
                ),
            )
        return _metrics[name]


def event_id_for(batch_id: str, row: int) -> str:
    """A UUIDv7 for row `row` of batch `batch_id`: the same inputs give the same id (redelivery),
    the time part is the batch id's own (a UUIDv7 made when the batch was sent), so ids stay
    time-ordered; the other 74 bits come from a hash of both."""
    hexid = batch_id.replace("-", "")
    try:
        ms = int(hexid[:12], 16) if len(hexid) == 32 else 0
    except ValueError:
        ms = 0
    h = int.from_bytes(hashlib.blake2b(f"{batch_id}/{row}".encode(), digest_size=10).digest(), "big")
    value = (ms << 80) | (0x7 << 76) | ((h >> 62) & 0xFFF) << 64 | (0b10 << 62) | (h & ((1 << 62) - 1))
    x = f"{value:032x}"
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def derive_event_ids(events: Sequence[Any], batches: Sequence[Any]) -> None:
    """Give the events of `batches` (one per flow, in order) ids derived from their batch's id;
    batches without an id (plain PUSH/PULL) keep the ids they have."""
    i = 0
    for b in batches:
        n = len(b.flows)
        if b.batch_id:
            for row in range(n):
                events[i + row].event_id = event_id_for(b.batch_id, row)
        i += n


def _zmtp_heartbeats(sock: zmq.Socket[Any], rel: ReliableSettings) -> None:
    """ZMTP heartbeats: a dead TCP peer (host gone, cable cut) is noticed and reconnected."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, rel.heartbeat_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, rel.peer_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, rel.peer_timeout_ms)


# -- sender (the sensor) ----------------------------------------------------------------------
@dataclass
class _Worker:
    wid: bytes
    name: str
    window: int
    last_seen: float
    assigned: set[bytes] = field(default_factory=set)
    last_dispatch: float = 0.0


@dataclass
class _Entry:
    frames: list[bytes]
    owner: bytes | None = None


class WorkSender:
    """The sensor side: `send()` queues a message and returns; a thread hands it to workers and
    keeps it until acknowledged. Same surface as Pusher (send, writable, close)."""

    def __init__(self, service: str, settings: SocketSettings, ctx: zmq.Context | None = None) -> None:  # type: ignore[type-arg]
        if not settings.bind:
            raise ConfigError(
                f"a reliable sender binds (workers connect to it): {settings.endpoint}",
                "bind",
                "set bind: true on the sending side and bind: false on the workers",
            )
        self.settings = settings
        self.rel = settings.reliable or ReliableSettings()
        self.ctx = ctx or zmq.Context.instance()
        self.endpoint = settings.endpoint
        self.metrics = transport_metrics(service)
        self.wq = workq_metrics(service)
        self.sock, self._curve = _open(self.ctx, zmq.ROUTER, settings, service)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished worker is an error, not a silent drop
        _zmtp_heartbeats(self.sock, self.rel)
        self._capacity = settings.hwm
        self._cond = threading.Condition()
        self._inbox: collections.deque[tuple[bytes, list[bytes]]] = collections.deque()
        self._held = 0  # inbox + store: what send() counts against the capacity
        self._closing = False
        wake_ep = f"inproc://mld-workq-{id(self)}"
        self._wake_rx = self.ctx.socket(zmq.PAIR)
        self._wake_rx.bind(wake_ep)
        self._wake_tx = self.ctx.socket(zmq.PAIR)
        self._wake_tx.setsockopt(zmq.SNDHWM, 1)
        self._wake_tx.connect(wake_ep)
        self._store: dict[bytes, _Entry] = {}
        self._queue: collections.deque[bytes] = collections.deque()
        self._workers: dict[bytes, _Worker] = {}
        self._stats = {"workers": 0, "redelivered": 0}
        self._view: dict[str, int] = {}  # worker name -> messages in flight, replaced whole by the thread
        self._thread = threading.Thread(target=self._run, name=f"workq:{self.endpoint}", daemon=True)
        self._thread.start()

    # app side ------------------------------------------------------------------------------
    def send(self, msg: Message) -> bool:
        """Queue one message (a FlowBatch gets a `batch_id` if it has none); False (and counted)
        when the sender still holds `hwm` unacknowledged messages after send_timeout_ms."""
        fields = msg.DESCRIPTOR.fields_by_name
        if "batch_id" in fields:
            if not getattr(msg, "batch_id"):  # noqa: B009 (any message type with the field)
                setattr(msg, "batch_id", uuid7())  # noqa: B010
            bid = str(getattr(msg, "batch_id")).encode()  # noqa: B009
        else:
            bid = uuid7().encode()
        frames = [msg.DESCRIPTOR.full_name.encode(), msg.SerializeToString()]
        if not self._wait_room(self.settings.send_timeout_ms):
            self.metrics.dropped.labels(self.endpoint, "hwm").inc()
            return False
        with self._cond:
            self._held += 1
            self._inbox.append((bid, frames))
            with contextlib.suppress(zmq.Again):  # a wake-up is already pending
                self._wake_tx.send(b"", zmq.NOBLOCK)
        self.metrics.sent.labels(self.endpoint).inc()
        return True

    def _wait_room(self, timeout_ms: int) -> bool:
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        with self._cond:
            while self._held >= self._capacity and not self._closing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 0.5)
            return not self._closing

    def writable(self, timeout_ms: int) -> bool:
        """Whether send() would queue now (waiting up to timeout_ms for an acknowledgement)."""
        return self._wait_room(timeout_ms)

    def unacked(self) -> int:
        with self._cond:
            return self._held

    def workers(self) -> int:
        """Workers currently announced and alive."""
        return self._stats["workers"]

    def redelivered(self) -> int:
        return self._stats["redelivered"]

    def in_flight(self) -> dict[str, int]:
        """Unacknowledged messages per worker name (as of the sender thread's last round)."""
        return dict(self._view)

    def close(self) -> None:
        """Wait up to linger_ms for every message to be acknowledged; what is left is counted lost."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            with contextlib.suppress(zmq.Again):
                self._wake_tx.send(b"", zmq.NOBLOCK)
        self._thread.join()
        self._wake_tx.close(0)

    # I/O thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        tick_ms = max(10, min(100, self.rel.heartbeat_ms // 2))
        close_deadline: float | None = None
        last_probe = time.monotonic()
        try:
            while True:
                ready = dict(poller.poll(tick_ms))
                now = time.monotonic()
                if self._wake_rx in ready:
                    while self._wake_rx.poll(0):
                        self._wake_rx.recv()
                self._take_inbox()
                if self.sock in ready:
                    self._read(now)
                self._expire(now)
                if now - last_probe >= self.rel.heartbeat_ms / 1000:
                    self._probe()
                    last_probe = now
                self._dispatch(now)
                self._view = {w.name: len(w.assigned) for w in self._workers.values()}
                with self._cond:
                    closing = self._closing
                if closing:
                    if close_deadline is None:
                        close_deadline = now + self.settings.linger_ms / 1000
                    if not self._store or now >= close_deadline:
                        break
        except Exception:  # a bug here must not silently stop delivery: log it loudly
            log.exception("work sender thread failed", extra={"endpoint": self.endpoint})
        finally:
            if self._store:
                self.metrics.dropped.labels(self.endpoint, "unacked").inc(len(self._store))
                log.warning(
                    "stopped with messages no worker acknowledged",
                    extra={"endpoint": self.endpoint, "messages": len(self._store)},
                )
            self._curve.close(self.sock)
            self.sock.close(0)
            self._wake_rx.close(0)

    def _take_inbox(self) -> None:
        with self._cond:
            items = list(self._inbox)
            self._inbox.clear()
        for bid, frames in items:
            if bid in self._store:  # the same id twice: keep one, the caller counted both
                self._release(1)
                continue
            self._store[bid] = _Entry(frames)
            self._queue.append(bid)
        self.wq.unacked.labels(self.endpoint).set(len(self._store))

    def _release(self, n: int) -> None:
        with self._cond:
            self._held -= n
            self._cond.notify_all()

    def _read(self, now: float) -> None:
        for _ in range(10_000):  # bounded: timers and dispatch run between rounds
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 3 or frames[1] != HDR:
                self.metrics.decode_errors.labels(self.endpoint, "protocol").inc()
                log.warning("message outside the work protocol skipped", extra={"endpoint": self.endpoint})
                continue
            wid, cmd, args = frames[0], frames[2], frames[3:]
            w = self._workers.get(wid)
            if cmd == READY:
                self._ready(wid, w, args, now)
            elif cmd == ACK:
                self._ack(args)
            elif cmd == BYE:
                if w is not None:
                    self._lose(w, "bye")
                continue
            elif cmd != HB:
                self.metrics.decode_errors.labels(self.endpoint, "protocol").inc()
                log.warning("unknown work command %r skipped", cmd[:16], extra={"endpoint": self.endpoint})
                continue
            if cmd != READY:
                if w is None:  # a worker this sender does not know (we restarted, or gave it up)
                    self._send(wid, [RESET])
                else:
                    w.last_seen = now

    def _ready(self, wid: bytes, w: _Worker | None, args: list[bytes], now: float) -> None:
        try:
            window = max(1, min(int(args[0]), 1024))
        except (IndexError, ValueError):
            self.metrics.decode_errors.labels(self.endpoint, "protocol").inc()
            log.warning("READY without a valid window skipped", extra={"endpoint": self.endpoint})
            return
        name = args[1].decode(errors="replace") if len(args) > 1 else wid.hex()
        if w is None:
            self._workers[wid] = _Worker(wid, name, window, now)
            self._set_workers()
            log.info("worker joined", extra={"endpoint": self.endpoint, "worker": name, "window": window})
        else:
            w.window, w.last_seen = window, now

    def _ack(self, ids: list[bytes]) -> None:
        freed = 0
        for bid in ids:
            e = self._store.pop(bid, None)
            if e is None:
                continue  # acknowledged before (a redelivered copy) or unknown
            freed += 1
            if e.owner is not None and (owner := self._workers.get(e.owner)) is not None:
                owner.assigned.discard(bid)
        if freed:
            self._release(freed)
            self.wq.unacked.labels(self.endpoint).set(len(self._store))

    def _lose(self, w: _Worker, reason: str) -> None:
        """Give a worker up: its unacknowledged messages go first in the queue, in send order."""
        del self._workers[w.wid]
        self._set_workers()
        self.wq.lost_workers.labels(self.endpoint, reason).inc()
        again = sorted(b for b in w.assigned if b in self._store)
        for bid in reversed(again):
            self._store[bid].owner = None
            self._queue.appendleft(bid)
        if again:
            self.wq.redelivered.labels(self.endpoint).inc(len(again))
            self._stats["redelivered"] += len(again)
        log.warning(
            "worker lost; its unacknowledged messages go to the others",
            extra={"endpoint": self.endpoint, "worker": w.name, "reason": reason, "messages": len(again)},
        )

    def _expire(self, now: float) -> None:
        limit = self.rel.peer_timeout_ms / 1000
        for w in [w for w in self._workers.values() if now - w.last_seen > limit]:
            self._lose(w, "silent")

    def _probe(self) -> None:
        """A heartbeat to every worker: one whose connection is gone (a killed process) is
        unreachable for ROUTER_MANDATORY and given up at once, without waiting for the timeout."""
        for w in list(self._workers.values()):
            if self._send(w.wid, [HB]) == "unreachable":
                self._lose(w, "unreachable")

    def _set_workers(self) -> None:
        self._stats["workers"] = len(self._workers)
        self.wq.workers.labels(self.endpoint).set(len(self._workers))

    def _send(self, wid: bytes, parts: list[bytes]) -> str | None:
        """None when queued; 'full' or 'unreachable' otherwise."""
        try:
            self.sock.send_multipart([wid, HDR, *parts], zmq.NOBLOCK)
        except zmq.Again:
            return "full"
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                return "unreachable"
            raise
        return None

    def _dispatch(self, now: float) -> None:
        """Each queued message to the worker with the most free credit (the least recently used
        among equals), until the queue or the credit runs out."""
        full: set[bytes] = set()
        while self._queue:
            best: _Worker | None = None
            for w in self._workers.values():
                if w.wid in full or len(w.assigned) >= w.window:
                    continue
                if (
                    best is None
                    or w.window - len(w.assigned) > best.window - len(best.assigned)
                    or (
                        w.window - len(w.assigned) == best.window - len(best.assigned)
                        and w.last_dispatch < best.last_dispatch
                    )
                ):
                    best = w
            if best is None:
                return
            bid = self._queue.popleft()
            e = self._store.get(bid)
            if e is None or e.owner is not None:
                continue  # acknowledged meanwhile (a late ack of a redelivered message)
            why = self._send(best.wid, [BATCH, bid, *e.frames])
            if why == "full":
                self._queue.appendleft(bid)
                full.add(best.wid)
                continue
            if why == "unreachable":
                self._queue.appendleft(bid)
                self._lose(best, "unreachable")
                continue
            e.owner = best.wid
            best.assigned.add(bid)
            best.last_dispatch = now


# -- receiver (a detector worker) ---------------------------------------------------------------
class WorkReceiver:
    """The worker side: `recv()` like Puller; `done()` after the results of everything received
    so far were sent on; acknowledgements leave `ack_delay_ms` later."""

    def __init__(
        self,
        service: str,
        settings: SocketSettings,
        types: dict[str, type[Message]],
        ctx: zmq.Context | None = None,  # type: ignore[type-arg]
        name: str = "",
    ) -> None:
        if settings.bind:
            raise ConfigError(
                f"a reliable worker connects to its senders: {settings.endpoint}",
                "bind",
                "set bind: false on the workers and bind: true on the sending side",
            )
        self.settings = settings
        self.rel = settings.reliable or ReliableSettings()
        self.ctx = ctx or zmq.Context.instance()
        self.types = types
        self.endpoint = settings.endpoint
        self.metrics = transport_metrics(service)
        self.name = (name or service).encode()
        self.socks: list[zmq.Socket[Any]] = []
        self._guards = []
        self.endpoints = [settings.endpoint, *settings.extra_endpoints]
        try:
            for ep in self.endpoints:
                one = settings.model_copy(update={"endpoint": ep, "extra_endpoints": ()})
                sock, guard = _open(self.ctx, zmq.DEALER, one, service)
                _zmtp_heartbeats(sock, self.rel)
                self.socks.append(sock)
                self._guards.append(guard)
        except BaseException:
            self._close_socks(0)
            raise
        self.poller = zmq.Poller()
        for sock in self.socks:
            self.poller.register(sock, zmq.POLLIN)
        self._delivered: list[tuple[int, bytes]] = []
        self._acks: collections.deque[tuple[float, int, bytes]] = collections.deque()
        self._next = 0  # fairness between senders
        self._last_hb = time.monotonic()
        for i in range(len(self.socks)):
            self._ready(i)

    def _ready(self, i: int) -> None:
        self._out(i, [READY, str(self.rel.window).encode(), self.name])

    def _out(self, i: int, parts: list[bytes]) -> None:
        # not connected yet, or the sender is not reading: heartbeats repeat, the sender's timeout decides
        with contextlib.suppress(zmq.Again):
            self.socks[i].send_multipart([HDR, *parts], zmq.NOBLOCK)

    def _service(self, now: float) -> float:
        """Send due acknowledgements and heartbeats; seconds until the next one is due."""
        due: dict[int, list[bytes]] = {}
        while self._acks and self._acks[0][0] <= now:
            _, i, bid = self._acks.popleft()
            due.setdefault(i, []).append(bid)
        for i, ids in due.items():
            self._out(i, [ACK, *ids])
        hb_s = self.rel.heartbeat_ms / 1000
        if now - self._last_hb >= hb_s:
            for i in range(len(self.socks)):
                self._out(i, [HB])
            self._last_hb = now
        nxt = self._last_hb + hb_s - now
        if self._acks:
            nxt = min(nxt, self._acks[0][0] - now)
        return max(0.0, nxt)

    def recv(self, timeout_ms: int) -> Message | None:
        """One message, or None after timeout_ms (heartbeats and acknowledgements go out meanwhile)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            now = time.monotonic()
            wait_s = min(self._service(now), max(0.0, deadline - now))
            events = dict(self.poller.poll(int(wait_s * 1000)))
            if events:
                msg = self._take(events)
                if msg is not None:
                    return msg
                continue
            if time.monotonic() >= deadline:
                return None

    def _take(self, events: dict[Any, int]) -> Message | None:
        n = len(self.socks)
        for k in range(n):
            i = (self._next + k) % n
            sock = self.socks[i]
            if sock not in events:
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = self._handle(i, frames)
                if msg is not None:
                    self._next = (i + 1) % n
                    return msg
        return None

    def _handle(self, i: int, frames: list[bytes]) -> Message | None:
        ep = self.endpoints[i]
        if len(frames) < 2 or frames[0] != HDR:
            self.metrics.decode_errors.labels(ep, "protocol").inc()
            log.warning("message outside the work protocol skipped", extra={"endpoint": ep})
            return None
        cmd = frames[1]
        if cmd == HB:
            return None
        if cmd == RESET:
            log.info("sender asked for a new READY (it restarted)", extra={"endpoint": ep})
            self._ready(i)
            return None
        if cmd != BATCH or len(frames) < 3:
            self.metrics.decode_errors.labels(ep, "protocol").inc()
            log.warning("unknown work command %r skipped", cmd[:16], extra={"endpoint": ep})
            return None
        bid = frames[2]
        msg = decode(frames[3:], self.types, self.metrics, ep)
        if msg is None:  # a poison message: acknowledge it, or every worker would choke on it in turn
            self._acks.append((time.monotonic(), i, bid))
            return None
        self._delivered.append((i, bid))
        return msg

    def done(self) -> None:
        """Everything received so far is handled and its results were handed to the output sockets."""
        due = time.monotonic() + self.rel.ack_delay_ms / 1000
        for i, bid in self._delivered:
            self._acks.append((due, i, bid))
        self._delivered.clear()
        if self.rel.ack_delay_ms == 0:
            self._service(time.monotonic())

    def close(self) -> None:
        """Send the acknowledgements still due, say BYE (the sender re-sends what this worker took
        but did not finish at once), and close."""
        if self._acks:
            time.sleep(max(0.0, self._acks[-1][0] - time.monotonic()))
            self._service(time.monotonic())
        for i in range(len(self.socks)):
            self._out(i, [BYE])
        self._close_socks(min(self.settings.linger_ms, 2000))

    def _close_socks(self, linger_ms: int) -> None:
        for sock, guard in zip(self.socks, self._guards, strict=False):
            guard.close(sock)
            sock.close(linger_ms)


def open_sender(
    service: str,
    settings: SocketSettings,
    ctx: zmq.Context | None = None,  # type: ignore[type-arg]
) -> Pusher | WorkSender:
    """The sending socket `settings` asks for: WorkSender with `reliable`, else a PUSH."""
    if settings.reliable is not None:
        return WorkSender(service, settings, ctx)
    return Pusher(service, settings, ctx)


def open_receiver(
    service: str,
    settings: SocketSettings,
    types: dict[str, type[Message]],
    ctx: zmq.Context | None = None,  # type: ignore[type-arg]
    name: str = "",
) -> Puller | WorkReceiver:
    """The receiving socket `settings` asks for: WorkReceiver with `reliable`, else a PULL."""
    if settings.reliable is not None:
        return WorkReceiver(service, settings, types, ctx, name)
    return Puller(service, settings, types, ctx)
