"""Scale-out under failure: two detector workers behind the sensor's acknowledged sender
(libs/common/workq.py), a real rag-logger, three firewall agents (one per node, dry_run, each
following etcd through a different member of a three-member cluster).

Under load one detector worker is SIGKILLed while it holds unacknowledged batches, and one etcd
member is SIGKILLed while configuration edits are made through a surviving member. Then: every
flow sent is in the rag-logger's artifacts exactly once (the dead worker's batches were sent again
to the survivor; a batch scored twice gives the same event ids, which the rag-logger writes once);
no configuration edit is lost (the agent behind the killed member applies the last revision once
the member rejoins); the killed parts rejoin (member healthy, restarted worker scores again); and a
DROP seen at node A reaches the firewall of nodes A, B and C (drop_fanout=all). Smaller tests check
the work protocol itself: redelivery, a sender restart, CURVE on the new sockets, poison messages.
"""

from __future__ import annotations

import collections
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import zmq
from click.testing import CliRunner
from prometheus_client import REGISTRY

from helpers import free_port, wait_for
from libs.common import curve
from libs.common.curve import CurveSettings
from libs.common.errors import ConfigError
from libs.common.workq import WorkReceiver, WorkSender, event_id_for
from libs.common.zmqio import ReliableSettings, SocketSettings
from libs.etcd_client.cli import main as config_main
from libs.etcd_client.client import EtcdClient
from libs.etcd_client.errors import EtcdUnavailable
from libs.lab.multi import (
    ETCD_BIN,
    EtcdCluster,
    EtcdMember,
    FlowSource,
    Proc,
    detector_doc,
    detector_proc,
    firewall_doc,
    firewall_proc,
    make_batch,
    rag_logger_proc,
    sigterm_all,
)
from ml_defender.v1 import flow_pb2

pytestmark = pytest.mark.integration
NODES = ("a", "b", "c")
FLOWS = 32  # flows per batch
ATTACKER = "198.18.66.6"
# a worker silent for 1.5 s is dead; acknowledgements leave 20 ms after the events were sent on
REL = {"window": 4, "heartbeat_ms": 200, "peer_timeout_ms": 1500, "ack_delay_ms": 20}
TYPES = {"ml_defender.v1.FlowBatch": flow_pb2.FlowBatch}


class Artifacts:
    """What reached the rag-logger's store: its daily .jsonl (one line per artifact pair written,
    tailed incrementally) and the event_*.pb files themselves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.offsets: dict[Path, int] = {}
        self.ids: dict[int, list[str]] = collections.defaultdict(list)  # flow id -> event ids stored
        self.by_worker: collections.Counter[str] = collections.Counter()

    def poll(self) -> Artifacts:
        for f in sorted(self.root.glob("*/events-*.jsonl")):
            off = self.offsets.get(f, 0)
            with open(f, "rb") as fh:
                fh.seek(off)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # whole lines only
            for line in data[:end].splitlines():
                doc = orjson.loads(line)
                self.ids[doc["flow"]["flow_id"]].append(doc["event_id"])
                self.by_worker[doc["node_id"]] += 1
            self.offsets[f] = off + end
        return self

    def scored(self) -> set[int]:
        return set(self.poll().ids)

    def pb_files(self) -> int:
        return sum(1 for _ in self.root.glob("*/event_*.pb"))


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ctx = zmq.Context()
        self.procs: list[Proc] = []
        self.cluster = EtcdCluster(
            [
                EtcdMember(f"m{i}", "127.0.0.1", free_port(), free_port(), tmp / f"etcd-m{i}")
                for i in range(3)
            ],
            tmp,
        )
        self.fw_eps = {n: f"tcp://127.0.0.1:{free_port()}" for n in NODES}
        self.source = FlowSource(f"tcp://127.0.0.1:{free_port()}", self.ctx, reliable=REL)
        self.rag_ep = f"tcp://127.0.0.1:{free_port()}"
        self.art = Artifacts(tmp / "artifacts")
        self.next_id = 1
        self.batches_sent = 0

    @property
    def sender(self) -> WorkSender:
        assert self.source.sender is not None
        return self.source.sender

    def rag_logger(self) -> Proc:
        p = rag_logger_proc("rag-logger", self.rag_ep, self.art.root, self.tmp)
        self.procs.append(p)
        return p.start()

    def detector(self, i: int) -> Proc:
        doc = detector_doc(
            f"det-{i}",
            self.source.endpoint,
            self.rag_ep,
            firewall_nodes=self.fw_eps,
            drop_fanout="all",
            extra={"explain": {"top_k": 0}},
            reliable=REL,
        )
        p = detector_proc(f"det-{i}", doc, self.tmp)
        self.procs.append(p)
        return p

    def send(
        self, batches: int, origin: str = "b", attacker: str | None = None, per_s: float = 0.0
    ) -> set[int]:
        """Send `batches` batches, paced at `per_s` batches a second (0 = as fast as accepted)."""
        ids: set[int] = set()
        t0 = time.monotonic()
        for k in range(batches):
            if per_s:
                time.sleep(max(0.0, t0 + k / per_s - time.monotonic()))  # pacing, not waiting for a result
            b = make_batch(0, FLOWS, origin, attacker, self.next_id)
            ids.update(f.flow_id for f in b.flows)
            self.next_id += FLOWS
            self.source.send(b)
            self.batches_sent += 1
        return ids

    def close(self) -> None:
        sigterm_all(self.procs)
        self.cluster.stop()
        self.source.close()
        self.ctx.term()


@pytest.fixture
def lab() -> Iterator[Lab]:
    if not Path(ETCD_BIN).exists():
        pytest.skip(f"etcd binary not found at {ETCD_BIN} (apt-get install etcd-server)")
    tmp = Path(tempfile.mkdtemp(prefix="mld-scale-"))
    lab = Lab(tmp)
    try:
        yield lab
    finally:
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _applied(client: EtcdClient, node: str) -> int:
    st = client.get(f"status/{node}/firewall/config")
    return int(st["document_revision"]) if st and st.get("result") in ("APPLIED", "UNCHANGED") else -1


def _put(client: EtcdClient, key: str, value: object) -> int:
    """A write that retries while the cluster elects a new leader (the killed member may have led)."""

    def attempt() -> int:
        try:
            return client.set(key, value)
        except EtcdUnavailable:
            return 0

    return int(wait_for(attempt, 20, interval=0.2, what=f"etcd write of {key}"))


def _journal_has(lab: Lab, node: str, addr: str) -> bool:
    p = lab.tmp / f"firewall-{node}.jsonl"
    return p.exists() and addr in p.read_text()


def _exactly_once(lab: Lab, sent: set[int]) -> None:
    """Every flow sent has one event in the store, and one artifact pair per flow is on disk."""
    art = lab.art.poll()
    twice = {f: ids for f, ids in art.ids.items() if len(ids) > 1}
    assert not twice, f"{len(twice)} flows stored more than once, e.g. {list(twice.items())[:3]}"
    assert set(art.ids) == sent, f"missing {len(sent - set(art.ids))}, unexpected {len(set(art.ids) - sent)}"
    assert art.pb_files() == len(sent)


def test_kill_worker_and_etcd_member_under_load(lab: Lab) -> None:
    lab.cluster.start()
    c0 = EtcdClient(lab.cluster.members[0].client_url)
    rev = c0.set("config/firewall", {"timeout_s": 600.0})
    lab.rag_logger()
    for i, n in enumerate(NODES):  # agent of node i follows etcd through member i
        p = firewall_proc(
            f"fw-{n}",
            firewall_doc(n, lab.fw_eps[n], lab.tmp),
            lab.tmp,
            lab.cluster.members[i].client_url,
            lab.rag_ep,
        )
        lab.procs.append(p.start())
    workers = [lab.detector(1).start(), lab.detector(2).start()]
    lab.source.wait_peers(2, 90, workers)
    for n in NODES:
        wait_for(lambda n=n: _applied(c0, n) >= rev, 30, what=f"firewall {n} on revision {rev}")
    assert _nodes(lab) == {n: "healthy" for n in NODES}

    # Before: every flow stored once, scored by both workers (credit-based load balancing).
    before = lab.send(40)
    wait_for(lambda: before <= lab.art.scored(), 30, what="phase 1 in the artifacts")
    _exactly_once(lab, before)
    assert lab.art.by_worker["det-1"] > 0 and lab.art.by_worker["det-2"] > 0

    # Under load: a sender streams while det-2 (holding unacknowledged batches) and etcd member m2
    # (behind agent c) are SIGKILLed, and three configuration edits go through member m0.
    window: set[int] = set()
    sent0 = lab.batches_sent
    # 800 flows/s in 25 batches/s: a steady export rate one worker (and the rag-logger) can carry
    # on this shared machine; det-2 is stopped 30 batches into the 120
    sending = threading.Thread(target=lambda: window.update(lab.send(120, per_s=25)), daemon=True)
    sending.start()
    wait_for(lambda: lab.batches_sent >= sent0 + 30, 30, what="load flowing")
    # Stopped, det-2 takes batches up to its credit and acknowledges none: the crash then hits
    # batches it holds (before its 1.5 s heartbeat timeout would have given them to det-1).
    workers[1].signal(signal.SIGSTOP)

    def holding() -> bool:
        held = lab.sender.in_flight()
        # (under a very busy host the heartbeat timeout may give det-2 up first: also a re-send)
        assert held.get("det-2", 0) >= 1 or lab.sender.redelivered() > 0, f"in flight: {held}"
        return True

    wait_for(holding, 5.0, what="det-2 holding batches")
    workers[1].kill()
    lab.cluster.kill_member(2)
    revs = [_put(c0, "config/firewall", {"timeout_s": 700.0 + k}) for k in range(3)]
    sending.join(120)
    assert not sending.is_alive()
    after_kill = lab.send(40)  # the surviving worker takes the whole stream
    sent = before | window | after_kill
    wait_for(lambda: sent <= lab.art.scored(), 60, what="every flow sent scored and stored")
    for n in ("a", "b"):
        wait_for(lambda n=n: _applied(c0, n) == revs[-1], 20, what=f"agent {n} applies edits meanwhile")
    _exactly_once(lab, sent)
    assert lab.sender.redelivered() > 0, "the killed worker held no batch: the test proved nothing"
    print(
        f"crash window: {len(window)} flows sent, all stored once; {lab.sender.redelivered()} batches re-sent"
    )

    # Rejoin: the member comes back (same data dir) and agent c catches up to the last edit;
    # the worker restarts and takes its share again.
    lab.cluster.start_member(2)
    lab.cluster.wait_healthy(2, 30)
    wait_for(
        lambda: _applied(c0, "c") == revs[-1], 40, what="agent c applies the edits made while m2 was down"
    )
    assert EtcdClient(lab.cluster.members[2].client_url).get("config/firewall") == {"timeout_s": 702.0}
    workers[1].start()
    lab.source.wait_peers(2, 90, workers)
    det2_before = lab.art.poll().by_worker["det-2"]
    rejoined = lab.send(40)
    sent |= rejoined
    wait_for(lambda: rejoined <= lab.art.scored(), 30, what="every flow after the rejoin scored")
    _exactly_once(lab, sent)
    assert lab.art.by_worker["det-2"] > det2_before, "the restarted worker scores again"

    # A DROP seen at node A is blocked by the agents of A, B and C.
    lab.send(1, origin="a", attacker=ATTACKER)
    for n in NODES:
        wait_for(lambda n=n: _journal_has(lab, n, ATTACKER), 20, what=f"{ATTACKER} blocked at node {n}")

    # `mld-config nodes` lists the three agents (heartbeats) as healthy, agent c included again.
    wait_for(
        lambda: _nodes(lab) == {n: "healthy" for n in NODES}, 20, what="mld-config nodes: a, b, c healthy"
    )


def _nodes(lab: Lab) -> dict[str, str]:
    res = CliRunner().invoke(config_main, ["--etcd", lab.cluster.members[0].client_url, "nodes", "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert all(r["lease_ttl_left_s"] > 0 for r in rows), rows
    return {r["node"]: r["health"] for r in rows if r["service"] == "firewall"}


# -- the work protocol itself (in-process, loopback) ----------------------------------------------
FAST = ReliableSettings(window=2, heartbeat_ms=50, peer_timeout_ms=300, ack_delay_ms=5)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _sender(ep: str, ctx: zmq.Context, **kw: object) -> WorkSender:  # type: ignore[type-arg]
    return WorkSender("wq_test", SocketSettings(endpoint=ep, bind=True, reliable=FAST, **kw), ctx)  # type: ignore[arg-type]


def _worker(ep: str, ctx: zmq.Context, name: str, types: dict | None = None, **kw: object) -> WorkReceiver:  # type: ignore[type-arg]
    s = SocketSettings(endpoint=ep, reliable=FAST, linger_ms=0, **kw)  # type: ignore[arg-type]
    return WorkReceiver("wq_test", s, TYPES if types is None else types, ctx, name)


def _crash(w: WorkReceiver) -> None:
    """What SIGKILL leaves: the connection closes, no acknowledgement, no BYE."""
    w._close_socks(0)


def _take(w: WorkReceiver, n: int, done: bool = True, timeout_s: float = 5.0) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        msg = w.recv(20)
        if msg is not None:
            got.append(msg.sequence)  # type: ignore[attr-defined]
            if done:
                w.done()
    return got


def _settle(s: WorkSender, *workers: WorkReceiver, what: str = "every batch acknowledged") -> None:
    def ok() -> bool:
        for w in workers:  # acknowledgements and heartbeats leave from the worker's loop
            if w.recv(10) is not None:
                w.done()
        return s.unacked() == 0

    wait_for(ok, 5, interval=0, what=what)


def test_dead_workers_batches_go_to_the_others() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    s = _sender(ep, ctx)
    r1, r2 = _worker(ep, ctx, "r1"), _worker(ep, ctx, "r2")
    try:
        wait_for(lambda: s.workers() == 2, 5, what="two workers READY")
        for i in range(12):
            assert s.send(flow_pb2.FlowBatch(sequence=i))
        held = _take(r1, 2, done=False)  # taken off the wire, never finished
        assert len(held) == 2
        _crash(r1)
        got = _take(r2, 12 - 2 + 2)  # its own share, then the crashed worker's, nothing lost
        assert sorted(got) == list(range(12)) and set(held) <= set(got)
        _settle(s, r2)
        assert s.redelivered() == 2 and s.workers() == 1
        assert _value("mld_wq_test_zmq_lost_workers_total", endpoint=ep, reason="unreachable") >= 1
        # A worker that stops cleanly says BYE: what it took but did not finish is re-sent at once.
        r3 = _worker(ep, ctx, "r3")
        wait_for(lambda: s.workers() == 2, 5, what="r3 READY")
        for i in range(100, 104):
            s.send(flow_pb2.FlowBatch(sequence=i))
        taken = _take(r3, 1, done=False)
        r3.close()
        rest = _take(r2, 4)
        assert sorted(rest) == list(range(100, 104)) and set(taken) <= set(rest)
        _settle(s, r2)
    finally:
        r2.close()
        s.close()
        ctx.term()


def test_silent_worker_is_given_up_and_rejoins_after_reset() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    s = _sender(ep, ctx)
    r1, r2 = _worker(ep, ctx, "r1"), _worker(ep, ctx, "r2")
    try:
        wait_for(lambda: s.workers() == 2, 5, what="two workers READY")
        for i in range(4):
            s.send(flow_pb2.FlowBatch(sequence=i))
        held = _take(r1, 1, done=False)
        # r1 now hangs (no heartbeat from its loop): after peer_timeout its batch goes to r2.
        got: list[int] = []

        def r2_working() -> bool:
            got.extend(_take(r2, 1, timeout_s=0.01))
            return s.redelivered() >= 1 and s.workers() == 1 and len(got) == 4

        wait_for(r2_working, 3, interval=0, what="r1 given up as silent, r2 has every batch")
        assert set(held) <= set(got)
        # r1 wakes up, finishes its batch (a duplicate: acknowledging it is harmless) and is told
        # RESET by the sender, which had forgotten it: it announces itself again and gets work.
        r1.done()

        def both_ready() -> bool:
            return r1.recv(10) is None and r2.recv(10) is None and s.workers() == 2

        wait_for(both_ready, 5, interval=0, what="r1 back")
        for i in range(10, 16):
            s.send(flow_pb2.FlowBatch(sequence=i))
        per: dict[str, list[int]] = {"r1": [], "r2": []}

        def all_done() -> bool:
            per["r1"] += _take(r1, 1, timeout_s=0.01)
            per["r2"] += _take(r2, 1, timeout_s=0.01)
            return len(per["r1"]) + len(per["r2"]) == 6

        wait_for(all_done, 5, interval=0, what="the six new batches")
        assert per["r1"] and per["r2"], f"both workers get work again: {per}"
        _settle(s, r1, r2)
    finally:
        r1.close()
        r2.close()
        s.close()
        ctx.term()


def test_sender_restart_asks_workers_to_announce_again() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    s = _sender(ep, ctx, linger_ms=0)
    r = _worker(ep, ctx, "r")
    try:
        wait_for(lambda: s.workers() == 1, 5, what="READY")
        s.close()

        def rebound() -> WorkSender | None:
            # libzmq releases the closed socket's port from its I/O thread, a moment later
            try:
                return _sender(ep, ctx)
            except ConfigError:
                return None

        s = wait_for(rebound, 5, interval=0.05, what="a new sender bound to the same endpoint")
        # a new sniffer process on the same endpoint knows no worker
        wait_for(lambda: r.recv(10) is None and s.workers() == 1, 5, interval=0, what="RESET, READY")
        s.send(flow_pb2.FlowBatch(sequence=7))
        assert _take(r, 1) == [7]
        _settle(s, r)
    finally:
        r.close()
        s.close()
        ctx.term()


def test_poison_batch_is_acknowledged_and_counted() -> None:
    """A message no worker can decode would otherwise go round every worker forever."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    s = _sender(ep, ctx)
    r = _worker(ep, ctx, "r", types={})  # knows no message type: every batch is undecodable
    try:
        wait_for(lambda: s.workers() == 1, 5, what="READY")
        s.send(flow_pb2.FlowBatch(sequence=1))
        _settle(s, r, what="the undecodable batch acknowledged")
        assert s.redelivered() == 0
        assert _value("mld_wq_test_zmq_decode_errors_total", endpoint=ep, type="unknown_type") >= 1
    finally:
        r.close()
        s.close()
        ctx.term()


def test_curve_on_the_reliable_sockets(tmp_path: Path) -> None:
    """The ROUTER is a CURVE server: an authorized worker gets batches, an unknown key never
    announces itself (refused and counted), plaintext is refused."""
    d = tmp_path / "keys"
    for name in ("sensor", "detector", "stranger"):
        curve.generate(d, name)
    allowed = tmp_path / "authorized"
    allowed.mkdir()
    shutil.copyfile(d / "detector.key", allowed / "detector.key")
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    server = CurveSettings(secret_key_file=str(d / "sensor.key_secret"), authorized_keys_dir=str(allowed))
    s = _sender(ep, ctx, curve=server)

    def client(who: str) -> CurveSettings:
        return CurveSettings(
            secret_key_file=str(d / f"{who}.key_secret"), server_key_file=str(d / "sensor.key")
        )

    good = _worker(ep, ctx, "good", curve=client("detector"))
    bad = _worker(ep, ctx, "bad", curve=client("stranger"))
    plain = _worker(ep, ctx, "plain")
    try:
        wait_for(
            lambda: (
                _value("mld_wq_test_zmq_refused_connections_total", endpoint=ep, reason="unknown_key") >= 1
            ),
            5,
            what="the unknown key refused",
        )
        wait_for(
            lambda: _value("mld_wq_test_zmq_refused_connections_total", endpoint=ep, reason="mechanism") >= 1,
            5,
            what="the plaintext worker refused",
        )
        wait_for(lambda: s.workers() >= 1, 5, what="the authorized worker READY")
        for i in range(6):
            s.send(flow_pb2.FlowBatch(sequence=i))
        assert sorted(_take(good, 6)) == list(range(6))
        assert bad.recv(100) is None and plain.recv(100) is None
        assert s.workers() == 1
        _settle(s, good)
    finally:
        for w in (good, bad, plain):
            w.close()
        s.close()
        ctx.term()  # hangs if a ZAP handler or monitor leaked a socket


def test_event_ids_are_deterministic_per_batch_and_row() -> None:
    from libs.common.events import uuid7, uuid7_time_ns
    from libs.common.workq import derive_event_ids

    bid = uuid7()
    a = [event_id_for(bid, row) for row in range(3)]
    assert a == [event_id_for(bid, row) for row in range(3)]  # a redelivered batch: same ids
    assert len(set(a)) == 3 and event_id_for(uuid7(), 0) not in a
    for eid in a:
        h = eid.replace("-", "")
        assert h[12] == "7" and int(h[16], 16) >> 2 == 0b10  # UUIDv7 version and variant
        assert uuid7_time_ns(eid) == uuid7_time_ns(bid)  # time-ordered by the batch's send time
    from ml_defender.v1 import detection_pb2

    batches = [flow_pb2.FlowBatch(batch_id=bid), flow_pb2.FlowBatch()]
    batches[0].flows.add()
    batches[0].flows.add()
    batches[1].flows.add()
    events = [detection_pb2.DetectionEvent(event_id=f"x{i}") for i in range(3)]
    derive_event_ids(events, batches)
    assert [e.event_id for e in events] == [a[0], a[1], "x2"]  # plain batches keep their ids
