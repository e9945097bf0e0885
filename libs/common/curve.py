"""ZeroMQ CURVE for the transport between hosts: key files, socket options and counted refusals.

Keys are ZeroMQ certificate files (`zmq.auth.create_certificates`): `<name>.key` holds the public
key (safe to copy to peers), `<name>.key_secret` both keys (mode 0600, never leaves its host).
The bound side of a socket is the CURVE server: it accepts only the client public keys found in
its `authorized_keys_dir`, checked by a ZAP handler (pyzmq's ThreadAuthenticator, one per ZeroMQ
context, one ZAP domain per socket). A refused client is counted in
`mld_<service>_zmq_refused_connections_total{endpoint,reason}`: `unknown_key` from the ZAP handler,
`mechanism` when a plaintext (NULL) peer talks to a CURVE socket, `handshake` when a peer breaks
off the handshake (both seen by a socket monitor: they fail before ZAP is asked).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from prometheus_client import Counter
from pydantic import BaseModel, Field
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from libs.common.errors import ConfigError

log = logging.getLogger(__name__)
_lock = threading.Lock()
_refused: dict[str, Counter] = {}


class CurveSettings(BaseModel, extra="forbid", frozen=True):
    """CURVE for one socket; which files are needed depends on the socket's side (`bind`)."""

    secret_key_file: str = Field(description="this side's <name>.key_secret (mode 0600)")
    server_key_file: str = Field(
        "", description="connecting side: the public <name>.key of the server it connects to"
    )
    authorized_keys_dir: str = Field(
        "", description="binding side: directory of the client public *.key files it accepts"
    )


def refused_counter(service: str) -> Counter:
    """`mld_<service>_zmq_refused_connections_total{endpoint,reason}`, created on first use."""
    name = service.replace("-", "_")
    with _lock:
        if name not in _refused:
            _refused[name] = Counter(
                f"mld_{name}_zmq_refused_connections",
                "Peers refused by CURVE: unknown_key (not authorized), mechanism (plaintext), handshake (broken off)",
                ["endpoint", "reason"],
            )
        return _refused[name]


# -- key files ------------------------------------------------------------------------------
def generate(directory: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Create `<name>.key` (public) and `<name>.key_secret` (0600) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise ConfigError(
            f"key pair {name!r} already exists", str(directory), "pick another name or pass --force"
        )
    old = os.umask(0o077)  # the secret file must never exist with wider permissions, even briefly
    try:
        pub_path, sec_path = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    os.chmod(sec_path, 0o600)
    os.chmod(pub_path, 0o644)
    return Path(pub_path), Path(sec_path)


def load_secret(path: str | Path, where: str) -> tuple[bytes, bytes]:
    """(public, secret) from a `.key_secret` file; refuses files others can read."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        public, secret = zmq.auth.load_certificate(str(p))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read CURVE secret key {p}: {exc}",
            where,
            "create one with `mld-keys generate DIR NAME` and point secret_key_file at NAME.key_secret",
        ) from None
    if secret is None:
        raise ConfigError(
            f"{p} holds no secret key (is it the public .key file?)",
            where,
            "use the NAME.key_secret file made by `mld-keys generate`",
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"CURVE secret key {p} is readable by others (mode {stat.S_IMODE(mode):o})",
            where,
            f"chmod 600 {p}",
        )
    return public, secret


def load_public(path: str | Path, where: str) -> bytes:
    """The public key of a `.key` (or `.key_secret`) file."""
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read CURVE public key {path}: {exc}",
            where,
            "copy the server's NAME.key (made by `mld-keys generate`) and set server_key_file to it",
        ) from None
    return public


def authorized_keys(directory: str | Path, where: str) -> list[bytes]:
    """Public keys in `directory` (*.key); an empty or missing directory is an error, not 'allow none'."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(
            f"authorized keys directory {d} does not exist",
            where,
            "create it and copy each client's NAME.key into it (`mld-keys authorize`)",
        )
    keys = [load_public(p, where) for p in sorted(d.glob("*.key"))]
    if not keys:
        raise ConfigError(
            f"no client public keys (*.key) in {d}",
            where,
            "copy each allowed client's NAME.key into it (`mld-keys authorize`)",
        )
    return keys


def check(curve: CurveSettings, bind: bool, where: str) -> None:
    """Validate the files a socket will need before anything opens (two-phase start)."""
    load_secret(curve.secret_key_file, f"{where}.curve.secret_key_file")
    if bind:
        authorized_keys(curve.authorized_keys_dir, f"{where}.curve.authorized_keys_dir")
    else:
        load_public(curve.server_key_file, f"{where}.curve.server_key_file")


# -- ZAP handler and socket monitor -----------------------------------------------------------
class _CountingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, counting every refusal under the refused socket's service and endpoint."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        super().__init__(ctx, log=logging.getLogger("mld.zap"))
        self.domains: dict[str, tuple[Counter, str]] = {}
        self._request_domain: dict[bytes, str] = {}

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 3:
            self._request_domain[msg[1]] = msg[2].decode(errors="replace")
        await super().handle_zap_message(msg)

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        domain = self._request_domain.pop(request_id, "")
        if status_code != b"200":
            counter, endpoint = self.domains.get(domain, (None, domain))
            if counter is not None:
                counter.labels(endpoint, "unknown_key").inc()
            log.warning(
                "CURVE client refused: %s", status_text.decode(errors="replace"), extra={"endpoint": endpoint}
            )
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


@dataclass
class _ContextAuth:
    auth: _CountingAuthenticator
    users: int = 0


_auths: dict[int, _ContextAuth] = {}
_domain_seq = 0


@dataclass
class CurveGuard:
    """What a CURVE socket holds beyond the socket itself; `close()` before closing the socket."""

    ctx: zmq.Context[Any] | None = None
    domain: str = ""
    monitor: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def close(self, sock: zmq.Socket[Any]) -> None:
        self.stop.set()
        if self.monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            self.monitor.join(timeout=2)
        if self.ctx is None:
            return
        with _lock:
            entry = _auths.get(id(self.ctx))
            if entry is None:
                return
            entry.auth.domains.pop(self.domain, None)
            entry.users -= 1
            if entry.users <= 0:
                entry.auth.stop()  # its sockets must close or ctx.term() would hang
                del _auths[id(self.ctx)]


# Handshake failures before ZAP is asked: a peer speaking another mechanism (plaintext NULL), or a
# peer that broke off the handshake (garbage, or a plaintext peer that gave up first).
_MONITOR_REASONS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "mechanism",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake",
}


def _watch_mechanism(mon: zmq.Socket[Any], counter: Counter, endpoint: str, stop: threading.Event) -> None:
    """Count handshakes that failed for a protocol reason (a plaintext peer on a CURVE socket)."""
    poller = zmq.Poller()
    poller.register(mon, zmq.POLLIN)
    try:
        while not stop.is_set():
            if not poller.poll(100):
                continue
            try:
                ev = recv_monitor_message(mon)
            except zmq.ZMQError:
                break
            if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
                break
            reason = _MONITOR_REASONS.get(ev["event"])
            if reason is not None:
                counter.labels(endpoint, reason).inc()
                log.warning("peer refused before authentication (%s)", reason, extra={"endpoint": endpoint})
    finally:
        mon.close(0)


def secure(
    ctx: zmq.Context[Any],
    sock: zmq.Socket[Any],
    curve: CurveSettings,
    bind: bool,
    service: str,
    endpoint: str,
) -> CurveGuard:
    """Set CURVE options on `sock` before it binds or connects; the server side gets a ZAP domain."""
    where = f"socket {endpoint}"
    public, secret = load_secret(curve.secret_key_file, f"{where}: curve.secret_key_file")
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    if not bind:
        sock.curve_serverkey = load_public(curve.server_key_file, f"{where}: curve.server_key_file")
        return CurveGuard()
    authorized_keys(curve.authorized_keys_dir, f"{where}: curve.authorized_keys_dir")  # fails early
    global _domain_seq
    counter = refused_counter(service)
    with _lock:
        entry = _auths.get(id(ctx))
        if entry is None:
            auth = _CountingAuthenticator(ctx)
            auth.start()
            entry = _auths[id(ctx)] = _ContextAuth(auth)
        entry.users += 1
        _domain_seq += 1
        domain = f"mld-{_domain_seq}"
        entry.auth.configure_curve(domain=domain, location=curve.authorized_keys_dir)
        entry.auth.domains[domain] = (counter, endpoint)
    sock.curve_server = True
    sock.zap_domain = domain.encode()
    guard = CurveGuard(ctx, domain)
    mon = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_MONITOR_STOPPED
    )
    guard.monitor = threading.Thread(
        target=_watch_mechanism,
        args=(mon, counter, endpoint, guard.stop),
        name=f"curve-mon:{endpoint}",
        daemon=True,
    )
    guard.monitor.start()
    return guard


def reload_authorized(ctx: zmq.Context[Any], guard: CurveGuard, directory: str) -> int:
    """Re-read a server's authorized keys (after `mld-keys authorize` or a removal); returns how many."""
    keys = authorized_keys(directory, "curve.authorized_keys_dir")
    with _lock:
        entry = _auths.get(id(ctx))
        if entry is not None:
            entry.auth.configure_curve(domain=guard.domain, location=directory)
    return len(keys)
