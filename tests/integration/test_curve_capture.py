"""A real packet capture (dumpcap on loopback, root) of CURVE traffic holds no event content;
the same capture of a plaintext run does (so the check can fail)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import zmq

from helpers import free_port, wait_for
from libs.common.curve import CurveSettings, generate
from libs.common.zmqio import Puller, Pusher, SocketSettings
from ml_defender.v1 import flow_pb2

DUMPCAP = shutil.which("dumpcap") or shutil.which("tcpdump")
MARKER = b"PLAINTEXT-MARKER-victim.example-31337"


def _sentinel(pcap: Path, port: int, tag: bytes) -> None:
    """Send `tag` in UDP datagrams to a closed loopback port until the capture file holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:

        def seen() -> bool:
            s.sendto(tag, ("127.0.0.1", port))
            return pcap.exists() and tag in pcap.read_bytes()

        wait_for(seen, 20, interval=0.1, what=f"{tag.decode()} in the capture")


def _capture(port: int, use_curve: bool, tmp: Path) -> bytes:
    """Send 50 marked batches over tcp://127.0.0.1:port while dumpcap records that port."""
    assert DUMPCAP is not None
    pcap = tmp / f"cap-{port}.pcapng"
    sentinel_port = free_port()
    flt = f"tcp port {port} or udp port {sentinel_port}"
    args = (
        [DUMPCAP, "-i", "lo", "-f", flt, "-w", str(pcap), "-q"]
        if DUMPCAP.endswith("dumpcap")
        else [DUMPCAP, "-i", "lo", "-U", "-w", str(pcap), flt]
    )
    cap = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ctx = zmq.Context()
    try:
        _sentinel(pcap, sentinel_port, b"SENTINEL-START")
        server = SocketSettings(endpoint=f"tcp://127.0.0.1:{port}", bind=True)
        client = SocketSettings(endpoint=f"tcp://127.0.0.1:{port}", linger_ms=0)
        if use_curve:
            keys = tmp / "keys"
            generate(keys, "srv", force=True)
            generate(keys, "cli", force=True)
            (tmp / "ok").mkdir(exist_ok=True)
            shutil.copy(keys / "cli.key", tmp / "ok" / "cli.key")
            server = server.model_copy(
                update={
                    "curve": CurveSettings(
                        secret_key_file=str(keys / "srv.key_secret"), authorized_keys_dir=str(tmp / "ok")
                    )
                }
            )
            client = client.model_copy(
                update={
                    "curve": CurveSettings(
                        secret_key_file=str(keys / "cli.key_secret"), server_key_file=str(keys / "srv.key")
                    )
                }
            )
        puller = Puller("curve_cap", server, {"ml_defender.v1.FlowBatch": flow_pb2.FlowBatch}, ctx=ctx)
        pusher = Pusher("curve_cap", client, ctx=ctx)
        try:
            for i in range(50):
                pusher.send(flow_pb2.FlowBatch(sequence=i, node_id=MARKER.decode()))
            for i in range(50):
                assert wait_for(lambda: puller.recv(100), what=f"batch {i}")
        finally:
            pusher.close()
            puller.close()
        # dumpcap reads the kernel ring in blocks and may stop before the last one: wait until a
        # datagram sent after the traffic is in the file, then everything before it is too.
        _sentinel(pcap, sentinel_port, b"SENTINEL-END")
    finally:
        cap.send_signal(signal.SIGTERM)
        try:
            cap.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cap.kill()
            cap.wait(timeout=10)
        ctx.term()
    return pcap.read_bytes()


@pytest.mark.privileged
def test_packet_capture_shows_no_plaintext_with_curve(require_root: None) -> None:
    if DUMPCAP is None:
        pytest.skip("dumpcap/tcpdump not installed (apt-get install tshark)")
    tmp = Path(tempfile.mkdtemp(prefix="mld-curve-cap-"))
    try:
        plain = _capture(free_port(), False, tmp)
        assert MARKER in plain, "control: the plaintext capture must show the marker"
        secured = _capture(free_port(), True, tmp)
        assert MARKER not in secured
        assert b"ml_defender.v1.FlowBatch" not in secured
        assert b"CURVE" in secured  # the ZMTP greeting names the mechanism; the rest is ciphertext
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
