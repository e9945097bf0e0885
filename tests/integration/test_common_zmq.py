"""ZeroMQ transport: messages arrive typed, garbage is counted, a full peer is counted as a drop."""

from __future__ import annotations

import pytest
import zmq
from prometheus_client import REGISTRY

from helpers import free_port, wait_for
from libs.common.lifecycle import StopFlag
from libs.common.zmqio import Puller, Pusher, SocketSettings
from ml_defender.v1 import flow_pb2

pytestmark = pytest.mark.integration
TYPES = {"ml_defender.v1.FlowBatch": flow_pb2.FlowBatch}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_push_pull_round_trip_and_bad_messages_counted() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    puller = Puller("ztest_a", SocketSettings(endpoint=ep, bind=True), TYPES, ctx=ctx)
    pusher = Pusher("ztest_a", SocketSettings(endpoint=ep), ctx=ctx)
    raw = ctx.socket(zmq.PUSH)
    raw.connect(ep)
    try:
        raw.send_multipart([b"ml_defender.v1.FlowBatch", b"\xff\xff\xff"])  # corrupt
        raw.send_multipart([b"something.Else", b""])  # unknown type
        raw.send(b"one frame")  # wrong framing
        for i in range(3):
            assert pusher.send(flow_pb2.FlowBatch(sequence=i))
        got: list[int] = []

        def all_arrived() -> bool:
            # The raw socket is another connection: its messages may arrive after the good ones.
            msg = puller.recv(50)
            if msg is not None:
                got.append(msg.sequence)  # type: ignore[attr-defined]
            return len(got) == 3 and all(
                _value("mld_ztest_a_zmq_decode_errors_total", endpoint=ep, type=t) == 1
                for t in ("corrupt", "unknown_type", "frames")
            )

        wait_for(all_arrived, timeout=10, interval=0, what="3 good messages and 3 counted bad ones")
        assert got == [0, 1, 2]
        stop = StopFlag()
        stop.set()
        assert list(puller.messages(stop)) == []  # nothing else queued
    finally:
        raw.close(0)
        pusher.close()
        puller.close()
        ctx.term()


def test_full_peer_is_a_counted_drop_not_a_hang() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    # Nobody receives: after the high-water marks fill, sends time out and are counted.
    puller = Puller("ztest_b", SocketSettings(endpoint=ep, bind=True, hwm=1), TYPES, ctx=ctx)
    pusher = Pusher("ztest_b", SocketSettings(endpoint=ep, hwm=1, send_timeout_ms=10, linger_ms=0), ctx=ctx)
    try:
        big = flow_pb2.FlowBatch(node_id="x" * 100_000)
        results = [pusher.send(big) for _ in range(200)]
        assert not all(results)
        dropped = _value("mld_ztest_b_zmq_dropped_messages_total", endpoint=ep, reason="hwm")
        assert dropped == results.count(False) > 0
        assert _value("mld_ztest_b_zmq_sent_messages_total", endpoint=ep) == results.count(True)
    finally:
        pusher.close()
        puller.close()
        ctx.term()
