"""Fast per-source heuristics over the flow stream (DESIGN.md section 3).

Pure: time comes from the records (`first_seen_ns`, the moment of the connection attempt), so a
replay gives the same results every time. What is counted is what scanning looks like, as in
Zeek's scan detection: connection attempts that were unanswered (no reply at all) or rejected
(an RST back, or no SYN-ACK). A browser opening 25 answered connections to 13 servers is normal;
a host whose attempts to 11 addresses or 11 ports go unanswered within 10 s is scanning.

State per source is bounded twice: at most `max_sources` sources (least recently seen dropped
first) and at most `max_events_per_source` remembered attempts each. Every counter is updated
incrementally when an attempt enters or leaves the window, so a record costs O(1).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ml_defender.v1 import flow_pb2
from services.sniffer.config import FastDetectorSettings

RULES: tuple[str, ...] = (
    "many_destinations",
    "smb_scan",
    "port_scan",
    "rst_ratio",
    "syn_flood",
    "icmp_sweep",
)
"""Rule names as they appear in FastResult.rules and in metrics."""

_ECHO_REQUEST = {1: 8, 58: 128}


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one flow says about its initiator: an attempt and how the responder reacted."""

    ts: int
    dst: bytes
    dport: int
    tcp: bool  # a TCP connection attempt (SYN from the initiator)
    failed: bool  # unanswered or rejected
    rejected: bool  # the responder sent RST
    half_open: bool  # handshake never completed by the initiator
    smb: bool
    echo: bool  # ICMP echo request


def _countable_destination(dst: bytes, src: bytes) -> bool:
    """Multicast, broadcast, the source itself and unspecified addresses are not scan targets."""
    if dst == src or not dst:
        return False
    if len(dst) == 4:
        first = dst[0]
        return not (first >= 224 or first == 0 or dst[3] == 255)
    return dst[0] != 0xFF and dst != bytes(16)


def classify(rec: flow_pb2.FlowRecord, smb_ports: tuple[int, ...]) -> Attempt | None:
    """The attempt a record represents, or None when it says nothing about scanning."""
    k, f = rec.key, rec.features
    if not _countable_destination(k.dst_addr, k.src_addr):
        return None
    proto = k.protocol
    if proto == 6:
        if f.src2dst_syn_packets == 0:
            return None  # joined mid-connection: not an attempt we saw start
        answered = f.dst2src_syn_packets > 0
        rejected = f.dst2src_rst_packets > 0 and not answered
        return Attempt(
            rec.first_seen_ns,
            k.dst_addr,
            k.dst_port,
            tcp=True,
            failed=not answered,
            rejected=rejected,
            half_open=f.src2dst_ack_packets == 0,
            smb=k.dst_port in smb_ports,
            echo=False,
        )
    if proto in (17, 132):
        failed = f.dst2src_packets == 0
        return Attempt(rec.first_seen_ns, k.dst_addr, k.dst_port, False, failed, False, False, False, False)
    if proto in _ECHO_REQUEST and k.src_port == _ECHO_REQUEST[proto]:
        failed = f.dst2src_packets == 0
        return Attempt(rec.first_seen_ns, k.dst_addr, -1, False, failed, False, False, False, True)
    return None


def _inc(d: dict[bytes | int, int], key: bytes | int, by: int) -> None:
    v = d.get(key, 0) + by
    if v:
        d[key] = v
    else:
        d.pop(key, None)


@dataclass
class SourceState:
    """Attempts of one source inside the window, with running counts."""

    events: deque[Attempt] = field(default_factory=deque)
    newest: int = 0
    failed_dsts: dict[bytes | int, int] = field(default_factory=dict)
    failed_ports: dict[bytes | int, int] = field(default_factory=dict)
    echo_dsts: dict[bytes | int, int] = field(default_factory=dict)
    half_open: dict[bytes | int, int] = field(default_factory=dict)
    tcp_to: dict[bytes | int, int] = field(default_factory=dict)
    smb_failed: int = 0
    tcp: int = 0
    rejected: int = 0

    def apply(self, a: Attempt, sign: int) -> None:
        if a.failed:
            _inc(self.failed_dsts, a.dst, sign)
            if a.dport >= 0:
                _inc(self.failed_ports, a.dport, sign)
            if a.smb:
                self.smb_failed += sign
        if a.echo:
            _inc(self.echo_dsts, a.dst, sign)
        if a.tcp:
            self.tcp += sign
            _inc(self.tcp_to, a.dst, sign)
            if a.rejected:
                self.rejected += sign
            if a.half_open:
                _inc(self.half_open, a.dst, sign)


class FastDetector:
    """Scores each flow by the rules its source fires; thresholds swap live."""

    def __init__(self, settings: FastDetectorSettings | None = None) -> None:
        self.settings = settings or FastDetectorSettings()
        self._sources: OrderedDict[bytes, SourceState] = OrderedDict()
        self.fired: dict[str, int] = dict.fromkeys(RULES, 0)

    def __len__(self) -> int:
        return len(self._sources)

    def update_settings(self, new: FastDetectorSettings) -> None:
        """Swap thresholds atomically; state is kept (only trimmed if the bounds shrank)."""
        self.settings = new
        while len(self._sources) > new.max_sources:
            self._sources.popitem(last=False)

    def observe(self, records: Sequence[flow_pb2.FlowRecord]) -> list[flow_pb2.FastResult]:
        """One FastResult per record, in order."""
        s = self.settings
        out: list[flow_pb2.FastResult] = []
        for rec in records:
            if not s.enabled:
                out.append(flow_pb2.FastResult(score=0.0))
                continue
            rules = self._observe_one(rec, s)
            out.append(flow_pb2.FastResult(score=s.score if rules else 0.0, rules=rules))
            for r in rules:
                self.fired[r] += 1
        return out

    def _state(self, src: bytes, s: FastDetectorSettings) -> SourceState:
        st = self._sources.get(src)
        if st is None:
            st = SourceState()
            self._sources[src] = st
            if len(self._sources) > s.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(src)
        return st

    def _observe_one(self, rec: flow_pb2.FlowRecord, s: FastDetectorSettings) -> list[str]:
        src = rec.key.src_addr
        attempt = classify(rec, s.smb_ports)
        st = self._sources.get(src) if attempt is None else self._state(src, s)
        if st is None:
            return []
        window_ns = int(s.window_s * 1e9)
        if attempt is not None:
            st.newest = max(st.newest, attempt.ts)
            if attempt.ts >= st.newest - window_ns:
                st.events.append(attempt)
                st.apply(attempt, 1)
        horizon = st.newest - window_ns
        ev = st.events
        while ev and (ev[0].ts < horizon or len(ev) > s.max_events_per_source):
            st.apply(ev.popleft(), -1)
        return self.rules_for(st, s)

    @staticmethod
    def rules_for(st: SourceState, s: FastDetectorSettings) -> list[str]:
        rules: list[str] = []
        if len(st.failed_dsts) > s.distinct_destinations_threshold:
            rules.append("many_destinations")
        if st.smb_failed > s.smb_connections_threshold:
            rules.append("smb_scan")
        if len(st.failed_ports) > s.distinct_ports_threshold:
            rules.append("port_scan")
        if st.tcp >= s.rst_ratio_min_connections and st.rejected / st.tcp > s.rst_ratio_threshold:
            rules.append("rst_ratio")
        if any(
            n >= s.syn_flood_min_half_open and n / st.tcp_to.get(dst, n) >= s.syn_flood_half_open_ratio
            for dst, n in st.half_open.items()
        ):
            rules.append("syn_flood")
        if len(st.echo_dsts) > s.icmp_sweep_threshold:
            rules.append("icmp_sweep")
        return rules
