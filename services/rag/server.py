"""The question socket: ZeroMQ REP serving JSON requests, and the client the CLI uses.

Request: {"cmd": "query"|"search"|"recent"|"similar"|"show"|"stats"|"ping"|"rebuild", "args": {...}}.
Reply: {"ok": true, "result": ...} or {"ok": false, "error": {"what", "where", "fix", "exit_code"}}.
Local only by default (tcp://127.0.0.1:5574); the CLI falls back to the index when nobody answers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from libs.common.errors import MLDefenderError
from libs.common.lifecycle import StopFlag
from services.rag.errors import ConfigError, QueryError, RagError, ServiceUnavailable

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Any]


class QueryServer:
    """REP socket in its own thread; each request runs a handler from `handlers`."""

    def __init__(
        self,
        endpoint: str,
        handlers: dict[str, Handler],
        stop: StopFlag,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.handlers = handlers
        self.stop = stop
        self.observe = observe
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.sock.close(0)
            raise ConfigError(
                f"cannot bind the query socket {endpoint}: {exc}",
                "query.endpoint",
                "choose a free endpoint or stop the other rag service",
            ) from None
        self.thread = threading.Thread(target=self._run, name="rag-query", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _answer(self, raw: bytes) -> tuple[dict[str, Any], str, str]:
        try:
            req = json.loads(raw)
            cmd = str(req.get("cmd", ""))
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("args must be an object")
        except (ValueError, AttributeError) as exc:
            err = QueryError(f"malformed request: {exc}", "query socket", 'send {"cmd": ..., "args": {...}}')
            return {"ok": False, "error": _err(err)}, "invalid", "error"
        handler = self.handlers.get(cmd)
        if handler is None:
            err = QueryError(
                f"unknown command {cmd!r}", "query socket", f"use one of {sorted(self.handlers)}"
            )
            return {"ok": False, "error": _err(err)}, "invalid", "error"
        try:
            return {"ok": True, "result": handler(args)}, cmd, "ok"
        except MLDefenderError as exc:
            return {"ok": False, "error": _err(exc)}, cmd, "error"
        except Exception as exc:  # a bug must not kill the socket thread; it is logged with its traceback
            log.exception("query handler failed", extra={"cmd": cmd})
            return (
                {"ok": False, "error": _err(RagError(f"internal error: {exc}", cmd, "see the service log"))},
                cmd,
                "error",
            )

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(100):
                continue
            raw = self.sock.recv()
            t0 = time.perf_counter()
            reply, cmd, result = self._answer(raw)
            self.sock.send(json.dumps(reply, default=str).encode())
            if self.observe is not None:
                self.observe(cmd, result, time.perf_counter() - t0)
        self.sock.close(0)

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)


def _err(exc: MLDefenderError) -> dict[str, Any]:
    return {"what": exc.what, "where": exc.where, "fix": exc.fix, "exit_code": exc.exit_code}


class RemoteError(MLDefenderError):
    """An error the service reported; keeps the service's exit code."""

    def __init__(self, what: str, where: str, fix: str, exit_code: int) -> None:
        super().__init__(what, where, fix)
        self.exit_code = exit_code


def call(endpoint: str, cmd: str, args: dict[str, Any] | None = None, timeout_ms: int = 3000) -> Any:
    """One request; ServiceUnavailable when no answer comes within timeout_ms."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps({"cmd": cmd, "args": args or {}}).encode())
        if not sock.poll(timeout_ms, zmq.POLLIN):
            raise ServiceUnavailable(
                f"no answer within {timeout_ms} ms", endpoint, "start it with `mld-rag run`, or use --direct"
            )
        reply = json.loads(sock.recv())
    finally:
        sock.close(0)
    if not reply.get("ok"):
        e = reply.get("error") or {}
        raise RemoteError(
            str(e.get("what", "error")),
            str(e.get("where", "")),
            str(e.get("fix", "")),
            int(e.get("exit_code", 1)),
        )
    return reply.get("result")
