"""ZeroMQ PUSH/PULL with high-water marks and counted drops.

Every message is two frames: the protobuf full name of the payload (so a receiver can check what
it got) and the serialized bytes. A sender whose peer stays full for `send_timeout_ms` drops the
message and counts it in `mld_<service>_zmq_dropped_messages_total`; with `send_timeout_ms=-1` it
blocks instead (back-pressure, used when replaying a file, where nothing should be lost).
With `reliable` set, sniffer -> detector uses acknowledged delivery instead (libs/common/workq.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TypeVar

import zmq
from google.protobuf.message import DecodeError, Message
from pydantic import BaseModel, Field, model_validator

from libs.common.curve import CurveGuard, CurveSettings, secure
from libs.common.errors import ConfigError
from libs.common.lifecycle import StopFlag
from libs.common.metrics import TransportMetrics, transport_metrics

log = logging.getLogger(__name__)
T = TypeVar("T", bound=Message)


class ReliableSettings(BaseModel, extra="forbid", frozen=True):
    """At-least-once delivery to workers (libs/common/workq.py): the binding side is a ROUTER that
    keeps each message until a worker acknowledges it, the connecting side one DEALER per peer."""

    window: int = Field(
        16,
        ge=1,
        le=1024,
        description=(
            "messages in flight per worker (its credit); keep window x batch size above the"
            " detector's batch.max_flows so a worker has the next model call's flows queued"
        ),
    )
    heartbeat_ms: int = Field(500, ge=10, le=60_000, description="worker -> sender liveness interval")
    peer_timeout_ms: int = Field(
        5000,
        ge=50,
        le=600_000,
        description="a worker silent this long is dead: its unacknowledged messages go to the others",
    )
    ack_delay_ms: int = Field(
        20,
        ge=0,
        le=10_000,
        description="a worker acknowledges this long after handing its results to ZeroMQ (time to flush)",
    )

    @model_validator(mode="after")
    def _timeout_over_heartbeat(self) -> ReliableSettings:
        if self.peer_timeout_ms < 2 * self.heartbeat_ms:
            raise ValueError("reliable.peer_timeout_ms must be at least 2 x heartbeat_ms")
        return self


class SocketSettings(BaseModel, extra="forbid"):
    """One endpoint: `bind` for the stable side (the receiver in this pipeline), `connect` otherwise."""

    endpoint: str = Field(description="tcp://host:port or ipc:///path")
    bind: bool = False
    hwm: int = Field(10_000, ge=1, description="high-water mark in messages")
    send_timeout_ms: int = Field(1000, ge=-1, description="-1 blocks when the peer is full")
    linger_ms: int = Field(5000, ge=0, description="how long close() waits to flush queued messages")
    extra_endpoints: tuple[str, ...] = Field(
        (), description="connecting side only: more peers on the same socket (e.g. every node's sniffer)"
    )
    curve: CurveSettings | None = Field(
        None, description="CURVE encryption + client authentication (between hosts); None = plaintext"
    )
    reliable: ReliableSettings | None = Field(
        None,
        description="acknowledged delivery with redelivery from dead workers (ROUTER/DEALER); None = PUSH/PULL",
    )

    @model_validator(mode="after")
    def _curve_side(self) -> SocketSettings:
        if self.bind and self.extra_endpoints:
            raise ValueError("extra_endpoints is for a connecting socket (bind: false)")
        if self.curve is not None:
            if self.bind and not self.curve.authorized_keys_dir:
                raise ValueError(
                    "a binding CURVE socket needs curve.authorized_keys_dir (the allowed clients)"
                )
            if not self.bind and not self.curve.server_key_file:
                raise ValueError("a connecting CURVE socket needs curve.server_key_file (the server's .key)")
        return self


def _open(
    ctx: zmq.Context[zmq.Socket[bytes]], kind: int, s: SocketSettings, service: str = ""
) -> tuple[zmq.Socket[bytes], CurveGuard]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, s.linger_ms)
    if kind == zmq.PUSH:
        sock.setsockopt(zmq.SNDHWM, s.hwm)
        sock.setsockopt(zmq.SNDTIMEO, s.send_timeout_ms)
    elif kind in (zmq.ROUTER, zmq.DEALER):  # workq: both directions carry messages
        sock.setsockopt(zmq.SNDHWM, s.hwm)
        sock.setsockopt(zmq.RCVHWM, s.hwm)
    else:
        sock.setsockopt(zmq.RCVHWM, s.hwm)
    guard = CurveGuard()
    try:
        if s.curve is not None:  # before bind/connect: a CURVE server never speaks plaintext
            guard = secure(ctx, sock, s.curve, s.bind, service, s.endpoint)
        if s.bind:
            sock.bind(s.endpoint)
        else:
            for ep in (s.endpoint, *s.extra_endpoints):
                sock.connect(ep)
    except zmq.ZMQError as exc:
        guard.close(sock)
        sock.close(0)
        raise ConfigError(
            f"cannot {'bind' if s.bind else 'connect'} {s.endpoint}: {exc}",
            "endpoint",
            "check the address, or stop the process that already holds the port",
        ) from None
    except BaseException:
        guard.close(sock)
        sock.close(0)
        raise
    return sock, guard


class Pusher:
    """A PUSH socket that sends protobuf messages and counts what it cannot deliver."""

    def __init__(self, service: str, settings: SocketSettings, ctx: zmq.Context | None = None) -> None:  # type: ignore[type-arg]
        self.settings = settings
        self.ctx = ctx or zmq.Context.instance()
        self.sock, self._curve = _open(self.ctx, zmq.PUSH, settings, service)
        self.metrics = transport_metrics(service)
        self.endpoint = settings.endpoint

    def send(self, msg: Message) -> bool:
        """Send one message; False (and counted) when the peer stayed full past the timeout."""
        frames = [msg.DESCRIPTOR.full_name.encode(), msg.SerializeToString()]
        try:
            self.sock.send_multipart(frames, copy=False)
        except zmq.Again:
            self.metrics.dropped.labels(self.endpoint, "hwm").inc()
            return False
        self.metrics.sent.labels(self.endpoint).inc()
        return True

    def writable(self, timeout_ms: int) -> bool:
        """Whether a message would be queued now (waiting up to timeout_ms for room)."""
        return bool(self.sock.poll(timeout_ms, zmq.POLLOUT))

    def close(self) -> None:
        """Close, waiting up to linger_ms for queued messages to leave."""
        self._curve.close(self.sock)
        self.sock.close(self.settings.linger_ms)


class Puller:
    """A PULL socket that yields decoded protobuf messages until a stop is requested."""

    def __init__(
        self,
        service: str,
        settings: SocketSettings,
        types: dict[str, type[Message]],
        ctx: zmq.Context | None = None,  # type: ignore[type-arg]
    ) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock, self._curve = _open(self.ctx, zmq.PULL, settings, service)
        self.types = types
        self.metrics = transport_metrics(service)
        self.endpoint = settings.endpoint
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)

    def recv(self, timeout_ms: int) -> Message | None:
        """One message, or None after timeout_ms; undecodable messages are counted and skipped."""
        deadline_ms = timeout_ms
        while True:
            if not self.poller.poll(deadline_ms):
                return None
            msg = self._decode(self.sock.recv_multipart())
            if msg is not None:
                return msg
            deadline_ms = 0  # a bad message was skipped: look for a good one already queued

    def _decode(self, frames: list[bytes]) -> Message | None:
        return decode(frames, self.types, self.metrics, self.endpoint)

    def done(self) -> None:
        """The messages received so far are handled (a no-op here: PUSH/PULL has no acknowledgement)."""

    def messages(self, stop: StopFlag, poll_ms: int = 100) -> Iterator[Message]:
        """Yield messages until `stop` is set, then drain what is already queued."""
        while not stop.is_set():
            msg = self.recv(poll_ms)
            if msg is not None:
                yield msg
        while (msg := self.recv(0)) is not None:
            yield msg

    def close(self) -> None:
        self._curve.close(self.sock)
        self.sock.close(0)


def decode(
    frames: list[bytes], types: dict[str, type[Message]], metrics: TransportMetrics, endpoint: str
) -> Message | None:
    """[type name, payload] -> message; anything else is counted, logged and None."""
    metrics.received.labels(endpoint).inc()
    if len(frames) != 2:
        metrics.decode_errors.labels(endpoint, "frames").inc()
        log.warning("message with %d frames skipped (expected 2)", len(frames), extra={"endpoint": endpoint})
        return None
    type_name = frames[0].decode(errors="replace")
    cls = types.get(type_name)
    if cls is None:
        metrics.decode_errors.labels(endpoint, "unknown_type").inc()
        log.warning("message of unexpected type %r skipped", type_name, extra={"endpoint": endpoint})
        return None
    msg = cls()
    try:
        msg.ParseFromString(frames[1])
    except DecodeError as exc:
        metrics.decode_errors.labels(endpoint, "corrupt").inc()
        log.warning("corrupt %s skipped: %s", type_name, exc, extra={"endpoint": endpoint})
        return None
    return msg
