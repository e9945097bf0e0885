"""CURVE on the ZeroMQ transport: known clients get through, unknown keys and plaintext peers are
refused and counted, and the bytes on the wire carry no event content."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner
from prometheus_client import REGISTRY

from helpers import free_port, wait_for
from libs.common import curve
from libs.common.curve import CurveSettings
from libs.common.errors import ConfigError
from libs.common.keys_cli import main as keys_main
from libs.common.zmqio import Puller, Pusher, SocketSettings
from ml_defender.v1 import flow_pb2

pytestmark = pytest.mark.integration
TYPES = {"ml_defender.v1.FlowBatch": flow_pb2.FlowBatch}
MARKER = "PLAINTEXT-MARKER-evil.example-4242"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """server, client and an unknown client pair made with `mld-keys`; only `client` is authorized."""
    runner = CliRunner()
    for name in ("server", "client", "stranger"):
        res = runner.invoke(keys_main, ["generate", str(tmp_path / "keys"), name])
        assert res.exit_code == 0, res.output
    res = runner.invoke(keys_main, ["authorize", str(tmp_path / "keys" / "client.key"), str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "keys" / "client.key_secret").stat().st_mode & 0o077 == 0
    return {
        "server": tmp_path / "keys" / "server.key_secret",
        "server_pub": tmp_path / "keys" / "server.key",
        "client": tmp_path / "keys" / "client.key_secret",
        "stranger": tmp_path / "keys" / "stranger.key_secret",
        "authorized": tmp_path / "ok",
    }


def _server(ep: str, keys: dict[str, Path]) -> SocketSettings:
    c = CurveSettings(secret_key_file=str(keys["server"]), authorized_keys_dir=str(keys["authorized"]))
    return SocketSettings(endpoint=ep, bind=True, curve=c)


def _client(ep: str, keys: dict[str, Path], who: str) -> SocketSettings:
    c = CurveSettings(secret_key_file=str(keys[who]), server_key_file=str(keys["server_pub"]))
    return SocketSettings(endpoint=ep, curve=c, linger_ms=0, send_timeout_ms=100)


def _batch(i: int) -> flow_pb2.FlowBatch:
    return flow_pb2.FlowBatch(sequence=i, node_id=MARKER)


def test_unknown_key_and_plaintext_are_refused_and_counted(keys: dict[str, Path]) -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    puller = Puller("curve_a", _server(ep, keys), TYPES, ctx=ctx)
    good = Pusher("curve_a", _client(ep, keys, "client"), ctx=ctx)
    bad = Pusher("curve_a", _client(ep, keys, "stranger"), ctx=ctx)
    plain = Pusher("curve_a", SocketSettings(endpoint=ep, linger_ms=0, send_timeout_ms=100), ctx=ctx)
    try:
        for i in range(3):
            assert bad.send(_batch(100 + i)) or True  # queued locally; must never arrive
            plain.send(_batch(200 + i))
            assert good.send(_batch(i))
        wait_for(
            lambda: (
                _value("mld_curve_a_zmq_refused_connections_total", endpoint=ep, reason="unknown_key") >= 1
            ),
            what="the unknown key refused by the ZAP handler",
        )
        wait_for(
            lambda: _value("mld_curve_a_zmq_refused_connections_total", endpoint=ep, reason="mechanism") >= 1,
            what="the plaintext peer refused",
        )
        got = []
        while (msg := puller.recv(300)) is not None:
            got.append(msg.sequence)  # type: ignore[attr-defined]
        assert got == [0, 1, 2]  # only the authorized client's messages, none of the others
    finally:
        for s in (good, bad, plain):
            s.close()
        puller.close()
        ctx.term()  # hangs if the ZAP handler or the monitor leaked a socket


def test_curve_settings_are_checked_before_any_socket(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="authorized_keys_dir"):
        SocketSettings(endpoint="tcp://127.0.0.1:1", bind=True, curve=CurveSettings(secret_key_file="x"))
    with pytest.raises(ValueError, match="server_key_file"):
        SocketSettings(endpoint="tcp://127.0.0.1:1", curve=CurveSettings(secret_key_file="x"))
    with pytest.raises(ConfigError, match="chmod 600"):
        keys["client"].chmod(0o644)
        curve.load_secret(keys["client"], "here")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no client public keys"):
        curve.check(
            CurveSettings(secret_key_file=str(keys["server"]), authorized_keys_dir=str(empty)), True, "input"
        )
    with pytest.raises(ConfigError, match="holds no secret key"):
        curve.load_secret(keys["server_pub"], "here")
    res = CliRunner().invoke(keys_main, ["authorize", str(keys["server"]), str(empty)])
    assert res.exit_code == 2 and "secret key" in res.output


class _Recorder:
    """A loopback TCP relay that keeps every byte it forwards: what a wire tap would see."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._ls = socket.create_server(("127.0.0.1", self.port))
        self._socks: list[socket.socket] = [self._ls]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._ls.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                with self._lock:
                    self.seen += data
                b.sendall(data)

    def close(self) -> None:
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def recorder() -> Iterator[type[_Recorder]]:
    made: list[_Recorder] = []

    class Tracked(_Recorder):
        def __init__(self, port: int) -> None:
            super().__init__(port)
            made.append(self)

    yield Tracked
    for r in made:
        r.close()


@pytest.mark.parametrize("use_curve", [True, False], ids=["curve", "plaintext-control"])
def test_wire_carries_no_event_content_with_curve(
    keys: dict[str, Path], recorder: type[_Recorder], use_curve: bool
) -> None:
    port = free_port()
    relay = recorder(port)
    ctx = zmq.Context()
    server = _server(f"tcp://127.0.0.1:{port}", keys)
    client = _client(f"tcp://127.0.0.1:{relay.port}", keys, "client")
    if not use_curve:
        server, client = server.model_copy(update={"curve": None}), client.model_copy(update={"curve": None})
    puller = Puller("curve_b", server, TYPES, ctx=ctx)
    pusher = Pusher("curve_b", client, ctx=ctx)
    try:
        for i in range(20):
            assert pusher.send(_batch(i))
        got = [wait_for(lambda: puller.recv(100), what=f"message {i}").sequence for i in range(20)]  # type: ignore[attr-defined]
        assert got == list(range(20))
        wire = bytes(relay.seen)
        assert len(wire) > 20 * len(MARKER)
        # The control run proves the tap sees payloads; with CURVE neither the content nor the
        # message type name crosses the wire in the clear.
        assert (MARKER.encode() in wire) is not use_curve
        assert (b"ml_defender.v1.FlowBatch" in wire) is not use_curve
    finally:
        pusher.close()
        puller.close()
        ctx.term()
