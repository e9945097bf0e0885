"""Per-source context features, computed the same way live and in training.

One flow cannot tell a single SSH brute-force attempt from one short benign SSH session; the
same source's recent flows can. For each record, in arrival order, `ContextTracker` counts over
that source's remembered flows plus the record itself. A source remembers its flows in arrival
order; the oldest are forgotten once their start is more than `window_s` before the newest
record's start, or beyond `max_flows_per_source`. Training feeds records in the sniffer's export
order, exactly as the live detector receives them, so both compute the same numbers. Counters
are kept incrementally (O(1) per flow, except the interval regularity over at most 32 starts).
State is bounded: `max_sources` sources (LRU).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ml_defender.v1 import flow_pb2

CONTEXT_FEATURES: tuple[str, ...] = (
    "src_window_flows",
    "src_window_same_dst_port_flows",
    "src_window_same_dst_flows",
    "src_window_distinct_dst_addrs",
    "src_window_distinct_dst_ports",
    "src_window_unanswered_ratio",
    "src_window_rst_ratio",
    "src_window_same_dst_port_bytes_cv",
    "src_window_same_dst_interval_cv",
)
_STARTS_KEPT = 32


class _Seen(NamedTuple):
    t_ns: int
    dst: bytes
    port: int  # (protocol << 16) | dst_port: "same service"
    unanswered: int
    rst: int
    nbytes: int


def _inc(d: dict, k: object, v: int = 1) -> None:  # type: ignore[type-arg]
    d[k] = d.get(k, 0) + v


def _dec(d: dict, k: object, v: int = 1) -> None:  # type: ignore[type-arg]
    left = d[k] - v
    if left:
        d[k] = left
    else:
        del d[k]


class _Source:
    """One source's remembered flows and running counts over them."""

    __slots__ = (
        "by_dst",
        "by_pair",
        "by_port",
        "bytes_sq",
        "bytes_sum",
        "flows",
        "rst",
        "starts",
        "unanswered",
    )

    def __init__(self) -> None:
        self.flows: deque[_Seen] = deque()
        self.by_dst: dict[bytes, int] = {}
        self.by_port: dict[int, int] = {}
        self.by_pair: dict[tuple[bytes, int], int] = {}
        self.starts: dict[tuple[bytes, int], deque[int]] = {}
        self.bytes_sum: dict[int, int] = {}
        self.bytes_sq: dict[int, int] = {}
        self.unanswered = 0
        self.rst = 0

    def add(self, s: _Seen) -> None:
        self.flows.append(s)
        pair = (s.dst, s.port)
        _inc(self.by_dst, s.dst)
        _inc(self.by_port, s.port)
        _inc(self.by_pair, pair)
        q = self.starts.get(pair)
        if q is None:
            q = self.starts[pair] = deque(maxlen=_STARTS_KEPT)
        q.append(s.t_ns)
        _inc(self.bytes_sum, s.port, s.nbytes)
        _inc(self.bytes_sq, s.port, s.nbytes * s.nbytes)
        self.unanswered += s.unanswered
        self.rst += s.rst

    def pop_oldest(self) -> None:
        s = self.flows.popleft()
        pair = (s.dst, s.port)
        _dec(self.by_dst, s.dst)
        _dec(self.by_port, s.port)
        _dec(self.by_pair, pair)
        if pair not in self.by_pair:
            del self.starts[pair]
        else:
            q = self.starts[pair]
            if len(q) > self.by_pair[pair]:
                q.popleft()
        if s.port not in self.by_port:
            del self.bytes_sum[s.port]
            del self.bytes_sq[s.port]
        else:
            self.bytes_sum[s.port] -= s.nbytes
            self.bytes_sq[s.port] -= s.nbytes * s.nbytes
        self.unanswered -= s.unanswered
        self.rst -= s.rst


def _bytes_cv(n: int, total: int, sq: int) -> float:
    """Coefficient of variation of same-port request sizes; 1.0 (no regularity) with < 3 flows."""
    if n < 3 or total <= 0:
        return 1.0
    mean = total / n
    var = max(sq / n - mean * mean, 0.0)
    return min(math.sqrt(var) / mean, 10.0)


def _interval_cv(starts: Sequence[int]) -> float:
    """Regularity of the gaps between starts toward the same destination (beaconing, guessing)."""
    if len(starts) < 3:
        return 1.0
    ts = sorted(starts)
    gaps = [float(b - a) for a, b in itertools.pairwise(ts)]
    mean = sum(gaps) / len(gaps)
    if mean <= 0:
        return 1.0
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    return min(math.sqrt(var) / mean, 10.0)


class ContextTracker:
    """Per-source memory of recent flows; feed it records in arrival order."""

    def __init__(
        self, window_s: float = 60.0, max_sources: int = 65_536, max_flows_per_source: int = 256
    ) -> None:
        self.window_ns = int(window_s * 1e9)
        self.max_sources = max_sources
        self.max_flows = max_flows_per_source
        self._by_src: OrderedDict[bytes, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_src)

    def set_window(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)

    def features(self, records: Sequence[flow_pb2.FlowRecord]) -> np.ndarray:
        """A (len(records), len(CONTEXT_FEATURES)) float64 matrix; updates the state."""
        out = np.zeros((len(records), len(CONTEXT_FEATURES)), dtype=np.float64)
        for i, rec in enumerate(records):
            out[i] = self._one(rec)
        return out

    def _one(self, rec: flow_pb2.FlowRecord) -> tuple[float, ...]:
        key = rec.key
        f = rec.features
        cur = _Seen(
            rec.first_seen_ns,
            key.dst_addr,
            (key.protocol << 16) | key.dst_port,
            1 if f.dst2src_packets == 0 else 0,
            1 if f.bidirectional_rst_packets else 0,
            int(f.src2dst_bytes),
        )
        src = key.src_addr
        st = self._by_src.get(src)
        if st is None:
            st = self._by_src[src] = _Source()
            if len(self._by_src) > self.max_sources:
                self._by_src.popitem(last=False)
        else:
            self._by_src.move_to_end(src)
        lo = cur.t_ns - self.window_ns
        flows = st.flows
        while flows and (flows[0].t_ns < lo or len(flows) >= self.max_flows):
            st.pop_oldest()
        st.add(cur)
        n = len(flows)
        pair = (cur.dst, cur.port)
        same_port = st.by_port[cur.port]
        return (
            float(n),
            float(same_port),
            float(st.by_pair[pair]),
            float(len(st.by_dst)),
            float(len(st.by_port)),
            st.unanswered / n,
            st.rst / n,
            _bytes_cv(same_port, st.bytes_sum[cur.port], st.bytes_sq[cur.port]),
            _interval_cv(st.starts[pair]),
        )
