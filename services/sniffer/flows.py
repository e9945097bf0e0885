"""The user-space flow table: batches of packets in, FlowRecords out, all vectorised.

A batch is decoded at once (`decode.py`), grouped by canonical key with `np.unique`, split into
flows (idle gap, active timeout, TCP FIN both ways or RST), aggregated per flow and direction with
`bincount`/`reduceat`, and merged with the flows still open from earlier batches. The result does
not depend on how packets are cut into batches, so the pcap path (big chunks) and the AF_PACKET
path (small batches) give the same records for the same packets.

Flow rules (the XDP path follows them too):
- the initiator (sender of the flow's first packet) is src;
- a flow ends when no packet came for `idle_timeout_s` (IDLE; `half_open_timeout_s` instead while
  the responder has sent nothing, so unanswered probes leave quickly), when it is older than
  `active_timeout_s` (ACTIVE, or WINDOW when `export_active_interval_s` is shorter: the next packet
  starts a new flow), after TCP FIN from both sides or
  an RST (FIN/RST: later packets within `tcp_close_linger_s` still belong to it unless they open
  a new connection with a bare SYN), when the table is full (EVICTED, oldest last-seen first), or
  at the end of a capture (WINDOW);
- with `tombstone_ttl_s`, what arrives on a connection after its FIN/RST flow left (a few packets,
  no SYN) is absorbed and counted instead of exported (`Tombstones`, shared with the XDP source).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from libs.common.errors import InputError
from ml_defender.v1 import flow_pb2
from services.sniffer import wire
from services.sniffer.config import FlowSettings, SnifferSettings
from services.sniffer.decode import MALFORMED_REASONS, PORTED, Packets, decode, frames_to_buffer
from services.sniffer.errors import CaptureFileError
from services.sniffer.pcapfile import read_capture

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_FLAG_BITS = (("syn", SYN), ("ack", ACK), ("psh", PSH), ("rst", RST), ("fin", FIN), ("urg", URG))
_BIG = np.iinfo(np.int64).max
_MAX_SPLIT_ROUNDS = 12  # then the sequential reference splitter finishes the batch

IDLE = flow_pb2.END_REASON_IDLE
ACTIVE = flow_pb2.END_REASON_ACTIVE
END_FIN = flow_pb2.END_REASON_FIN
END_RST = flow_pb2.END_REASON_RST
EVICTED = flow_pb2.END_REASON_EVICTED
WINDOW = flow_pb2.END_REASON_WINDOW

# Per-flow accumulators: (name, dtype, columns). Columns 2 = per direction (0 src2dst, 1 dst2src).
_FIELDS: tuple[tuple[str, Any, int], ...] = (
    ("pk", np.int64, 2),
    ("by", np.int64, 2),
    ("psmin", np.int64, 2),
    ("psmax", np.int64, 2),
    ("pssq", np.float64, 2),
    ("first", np.int64, 2),
    ("last", np.int64, 2),
    ("syn", np.int64, 2),
    ("ack", np.int64, 2),
    ("psh", np.int64, 2),
    ("rst", np.int64, 2),
    ("fin", np.int64, 2),
    ("urg", np.int64, 2),
    ("pn", np.int64, 2),
    ("psum", np.int64, 2),
    ("psq", np.float64, 2),
    ("pmin", np.int64, 2),
    ("pmax", np.int64, 2),
    ("bfirst", np.int64, 1),
    ("blast", np.int64, 1),
    ("bpn", np.int64, 1),
    ("bpsum", np.int64, 1),
    ("bpsq", np.float64, 1),
    ("bpmin", np.int64, 1),
    ("bpmax", np.int64, 1),
    # state and key (key oriented initiator -> responder)
    ("init_lo", np.bool_, 1),
    ("fin_lo", np.bool_, 1),
    ("fin_hi", np.bool_, 1),
    ("term_ts", np.int64, 1),
    ("term_rst", np.bool_, 1),
    ("wall", np.int64, 1),
    ("fam", np.int64, 1),
    ("s_hi", np.uint64, 1),
    ("s_lo", np.uint64, 1),
    ("d_hi", np.uint64, 1),
    ("d_lo", np.uint64, 1),
    ("sport", np.int64, 1),
    ("dport", np.int64, 1),
    ("proto", np.int64, 1),
    ("vlan", np.int64, 1),
    ("icmp", np.int64, 1),
)
_SUM_FIELDS = ("pk", "by", "pssq", "syn", "ack", "psh", "rst", "fin", "urg", "pn", "psum", "psq")
_MIN_FIELDS = ("psmin", "pmin")
_MAX_FIELDS = ("psmax", "pmax")

Cols = dict[str, np.ndarray[Any, Any]]


def _alloc(n: int) -> Cols:
    cols: Cols = {}
    for name, dtype, width in _FIELDS:
        shape: tuple[int, ...] = (n, 2) if width == 2 else (n,)
        cols[name] = np.zeros(shape, dtype=dtype)
    return cols


def _take(cols: Cols, idx: I64) -> Cols:
    return {k: v[idx] for k, v in cols.items()}


@dataclass
class TableCounters:
    """What the table has seen; the service turns these into metrics."""

    packets: int = 0
    bytes: int = 0
    ip_packets: int = 0
    flows_exported: int = 0
    malformed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MALFORMED_REASONS, 0))
    exported_by_reason: dict[str, int] = field(default_factory=dict)
    evicted: int = 0
    late_flows_absorbed: int = 0
    late_packets_absorbed: int = 0


_LATE_MAX_PACKETS = 4  # a closed connection's remnant: the last ACK, a retransmitted FIN or RST


class Tombstones:
    """Keys of TCP flows that just left closed (FIN/RST), so their late packets do not become flows.

    With `tcp_close_linger_s` 0 a closed flow leaves at once, and the ACK that ends a FIN exchange
    (or a retransmitted RST) would start a one-packet flow of its own that no model was trained on.
    A record of at most a few packets without a SYN on the same connection, starting within
    `tombstone_ttl_s` (packet clock) of the closed flow's last packet, is absorbed and counted
    instead. Works on records, so every capture source filters its output the same way (parity).
    Bounded: at most `tombstone_max_keys` keys, oldest dropped first.
    """

    def __init__(self, flows: FlowSettings) -> None:
        self._last: OrderedDict[tuple[bytes, int, bytes, int, int, int], int] = OrderedDict()
        self._now = 0
        self.flows_absorbed = 0
        self.packets_absorbed = 0
        self.configure(flows)

    def configure(self, flows: FlowSettings) -> None:
        """Apply the (hot) TTL and bound; a TTL of 0 forgets every key."""
        self.ttl_ns = int(flows.tombstone_ttl_s * 1e9)
        self.max_keys = flows.tombstone_max_keys
        if self.ttl_ns <= 0:
            self._last.clear()

    def __len__(self) -> int:
        return len(self._last)

    def filter(self, records: list[flow_pb2.FlowRecord]) -> list[flow_pb2.FlowRecord]:
        """`records` (in export order) without the absorbed late remnants of closed flows."""
        if self.ttl_ns <= 0 or not records:
            return records
        kept: list[flow_pb2.FlowRecord] = []
        last = self._last
        for rec in records:
            k = rec.key
            if k.protocol != 6:
                kept.append(rec)
                continue
            a, b = (k.src_addr, k.src_port), (k.dst_addr, k.dst_port)
            key = (*a, *b, k.vlan_id, 6) if a <= b else (*b, *a, k.vlan_id, 6)
            closed = rec.end_reason in (END_FIN, END_RST)
            t = last.get(key)
            f = rec.features
            if (
                t is not None
                and rec.first_seen_ns - t <= self.ttl_ns
                and f.bidirectional_syn_packets == 0
                and f.bidirectional_packets <= _LATE_MAX_PACKETS
            ):
                self.flows_absorbed += 1
                self.packets_absorbed += f.bidirectional_packets
                if closed:  # a retransmitted RST: the connection stays closed a while longer
                    last[key] = max(t, rec.last_seen_ns)
                    last.move_to_end(key)
                continue
            kept.append(rec)
            if closed:
                last[key] = rec.last_seen_ns
                last.move_to_end(key)
            elif t is not None:
                del last[key]  # a new connection reuses the key: its packets are its own
            self._now = max(self._now, rec.last_seen_ns)
        while len(last) > self.max_keys:
            last.popitem(last=False)
        horizon = self._now - self.ttl_ns
        while last and next(iter(last.values())) < horizon:  # roughly oldest first; exact enough
            last.popitem(last=False)
        return kept


class FlowTable:
    """Open flows keyed by canonical key, fed by batches of frames; bounded by `flows.max_flows`."""

    def __init__(
        self,
        settings: SnifferSettings | None = None,
        interface: str = "",
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings or SnifferSettings()
        self.flow_settings: FlowSettings = self.settings.flows
        self.interface = interface
        self.node_id = self.settings.node_id
        self.wall_clock = wall_clock
        self.counters = TableCounters()
        self._index: dict[bytes, int] = {}
        self._keys: list[bytes] = []
        self._cap = 0
        self._t: Cols = _alloc(0)
        self._free: list[int] = []
        self._ready: list[flow_pb2.FlowRecord] = []
        self.tombstones = Tombstones(self.flow_settings)
        self._grow(1)

    # ------------------------------------------------------------------ public interface
    def __len__(self) -> int:
        return len(self._index)

    def update_settings(self, flows: FlowSettings) -> None:
        """Swap timeouts live (max_flows keeps its start value: it sizes memory)."""
        self.flow_settings = flows.model_copy(update={"max_flows": self.flow_settings.max_flows})
        self.tombstones.configure(self.flow_settings)

    def add_frames(self, ts_ns: Sequence[int] | I64, frames: Sequence[bytes]) -> None:
        """Add a batch of raw Ethernet frames captured at `ts_ns` (ns since the epoch)."""
        if len(frames) != len(ts_ns):
            raise ValueError(f"add_frames: {len(ts_ns)} timestamps for {len(frames)} frames")
        if not frames:
            return
        data, offsets, lens = frames_to_buffer(list(frames))
        self.add_packets(decode(data, offsets, lens, np.asarray(ts_ns, dtype=np.int64)))

    def add_packets(self, pk: Packets) -> None:
        """Add an already decoded batch (the pcap path decodes straight from the file buffer)."""
        c = self.counters
        c.packets += pk.total
        c.bytes += pk.total_bytes
        for reason, count in pk.malformed.items():
            c.malformed[reason] = c.malformed.get(reason, 0) + count
        if len(pk):
            c.ip_packets += len(pk)
            self._add(pk, self.wall_clock())

    def expire(self, now_ns: int) -> list[flow_pb2.FlowRecord]:
        """Flows ended so far plus open flows timed out at `now_ns` (packet time)."""
        fs = self.flow_settings
        slots = self._occupied()
        if len(slots):
            t = self._t
            idle_ns = _idle_ns(fs, t["pk"][slots, 1] == 0)
            idle = now_ns - t["blast"][slots] > idle_ns
            term_ts = t["term_ts"][slots]
            term = (term_ts >= 0) & (now_ns > term_ts + int(fs.tcp_close_linger_s * 1e9))
            active_ns = fs.active_split_ns()
            active = now_ns - t["bfirst"][slots] > active_ns
            done = idle | term | active
            if done.any():
                idle_first = t["blast"][slots] + idle_ns <= t["bfirst"][slots] + active_ns
                reason = np.where(
                    term_ts >= 0,
                    np.where(t["term_rst"][slots], END_RST, END_FIN),
                    np.where(idle_first, IDLE, fs.active_reason()),
                )
                self._export_slots(slots[done], reason[done])
        return self._drain()

    def flush(self) -> list[flow_pb2.FlowRecord]:
        """End of capture: every open flow leaves (WINDOW, or FIN/RST when it had closed)."""
        slots = self._occupied()
        if len(slots):
            t = self._t
            slots = slots[_export_order(t, slots, by_first=True)]
            reason = np.where(
                t["term_ts"][slots] >= 0, np.where(t["term_rst"][slots], END_RST, END_FIN), WINDOW
            )
            self._export_slots(slots, reason, sort=False)
        return self._drain()

    # ------------------------------------------------------------------ internals
    def _drain(self) -> list[flow_pb2.FlowRecord]:
        out, self._ready = self._ready, []
        return out

    def _occupied(self) -> I64:
        if not self._index:
            return np.zeros(0, dtype=np.int64)
        return np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index))

    def _grow(self, need: int) -> None:
        if len(self._free) >= need:
            return
        new_cap = max(16, self._cap * 2, self._cap + need - len(self._free))
        bigger = _alloc(new_cap)
        for k, v in self._t.items():
            bigger[k][: self._cap] = v
        self._free.extend(range(new_cap - 1, self._cap - 1, -1))
        self._keys.extend([b""] * (new_cap - self._cap))
        self._t = bigger
        self._cap = new_cap

    def _export_slots(self, slots: I64, reasons: I64, sort: bool = True) -> None:
        self._emit(self._t, slots, reasons, sort)
        for s in slots.tolist():
            del self._index[self._keys[s]]
            self._free.append(s)

    def _emit(self, cols: Cols, idx: I64, reasons: I64, sort: bool = True) -> None:
        """Turn rows `idx` of `cols` into records (ordered by last, first seen) ready to leave."""
        if not len(idx):
            return
        order = _export_order(cols, idx, by_first=False) if sort else np.arange(len(idx))
        recs = build_records(_take(cols, idx[order]), np.asarray(reasons)[order], self)
        c = self.counters
        tomb = self.tombstones
        if tomb.ttl_ns > 0:
            before = (tomb.flows_absorbed, tomb.packets_absorbed)
            recs = tomb.filter(recs)
            c.late_flows_absorbed += tomb.flows_absorbed - before[0]
            c.late_packets_absorbed += tomb.packets_absorbed - before[1]
            reasons = np.fromiter((r.end_reason for r in recs), dtype=np.int64, count=len(recs))
        c.flows_exported += len(recs)
        values, counts = np.unique(np.asarray(reasons), return_counts=True)
        for r, cnt in zip(values.tolist(), counts.tolist(), strict=True):
            name = flow_pb2.EndReason.Name(r)[len("END_REASON_") :]
            c.exported_by_reason[name] = c.exported_by_reason.get(name, 0) + cnt
        self._ready.extend(recs)

    def _add(self, pk: Packets, wall: int) -> None:
        fs = self.flow_settings
        idle_ns = int(fs.idle_timeout_s * 1e9)
        active_ns = fs.active_split_ns()  # the export window cuts long flows like an active timeout
        linger_ns = int(fs.tcp_close_linger_s * 1e9)
        half_ns = int(fs.half_open_timeout_s * 1e9)
        if half_ns >= idle_ns:
            half_ns = 0  # the idle rule already covers it

        # canonical orientation: the lower (address, port) endpoint is "lo"
        s_lt = (pk.s_hi < pk.d_hi) | (
            (pk.s_hi == pk.d_hi) & ((pk.s_lo < pk.d_lo) | ((pk.s_lo == pk.d_lo) & (pk.sport <= pk.dport)))
        )
        lo_hi = np.where(s_lt, pk.s_hi, pk.d_hi)
        lo_lo = np.where(s_lt, pk.s_lo, pk.d_lo)
        hi_hi = np.where(s_lt, pk.d_hi, pk.s_hi)
        hi_lo = np.where(s_lt, pk.d_lo, pk.s_lo)
        lo_port = np.where(s_lt, pk.sport, pk.dport)
        hi_port = np.where(s_lt, pk.dport, pk.sport)
        kmat = np.empty((len(pk), 7), dtype=np.uint64)
        kmat[:, 0] = (
            (pk.fam.astype(np.uint64) << np.uint64(56))
            | (pk.proto.astype(np.uint64) << np.uint64(32))
            | (pk.vlan.astype(np.uint64))
        )
        kmat[:, 1] = lo_hi
        kmat[:, 2] = lo_lo
        kmat[:, 3] = hi_hi
        kmat[:, 4] = hi_lo
        kmat[:, 5] = (lo_port.astype(np.uint64) << np.uint64(16)) | hi_port.astype(np.uint64)
        kmat[:, 6] = 0
        kmat = np.ascontiguousarray(kmat)
        key_rows, inv = _unique_rows(kmat)
        key_bytes = [kmat[i].tobytes() for i in key_rows.tolist()]
        uslot = np.fromiter(
            (self._index.get(kb, -1) for kb in key_bytes), dtype=np.int64, count=len(key_bytes)
        )

        order = np.lexsort((pk.ts, inv))
        k = inv[order]
        t = pk.ts[order]
        lo = s_lt[order]
        fl = pk.flags[order]
        n = len(t)
        key_first = np.empty(n, dtype=bool)
        key_first[0] = True
        np.not_equal(k[1:], k[:-1], out=key_first[1:])
        slot = uslot[k]
        has_open = slot >= 0
        T = self._t
        sl = np.where(has_open, slot, 0)
        o_first = np.where(has_open, T["bfirst"][sl], 0)
        o_last = np.where(has_open, T["blast"][sl], 0)
        o_finlo = has_open & T["fin_lo"][sl]
        o_finhi = has_open & T["fin_hi"][sl]
        o_term = np.where(has_open, T["term_ts"][sl], -1)
        o_termrst = has_open & T["term_rst"][sl]
        o_initlo = has_open & T["init_lo"][sl]
        o_resp = has_open & (T["pk"][sl, 1] > 0)

        is_tcp = pk.proto[order] == 6
        rst = is_tcp & ((fl & RST) != 0)
        fin_lo = is_tcp & ((fl & FIN) != 0) & lo
        fin_hi = is_tcp & ((fl & FIN) != 0) & ~lo
        syn_only = is_tcp & ((fl & (SYN | ACK)) == SYN)

        prev_t = np.empty(n, dtype=np.int64)
        prev_t[0] = 0
        prev_t[1:] = t[:-1]
        prev_t = np.where(key_first, o_last, prev_t)
        gap = t - prev_t
        idle_gap = (gap > idle_ns) & ~(key_first & ~has_open)
        brk = idle_gap | (key_first & ~has_open)

        split = SplitInput(
            key_first=key_first,
            has_open=has_open,
            t=t,
            rst=rst,
            fin_lo=fin_lo,
            fin_hi=fin_hi,
            syn_only=syn_only,
            o_first=o_first,
            o_last=o_last,
            o_finlo=o_finlo,
            o_finhi=o_finhi,
            o_term=o_term,
            o_termrst=o_termrst,
            idle_ns=idle_ns,
            linger_ns=linger_ns,
            active_ns=active_ns,
            half=HalfOpen(half_ns, gap, lo, o_initlo, o_resp),
        )
        seg_state = _segment(split, brk, rounds=_MAX_SPLIT_ROUNDS)
        if seg_state is None:
            seg_state = _segment(split, _segment_sequential(split), rounds=0, compute_only=True)
            assert seg_state is not None
        brk, seg, sfi, carried, term_before, term_ts_seg, term_rst_seg, finlo_c, finhi_c, resp_before = (
            seg_state
        )
        nseg = len(sfi)

        # --- why each flow that ended in this batch ended
        # A closed (FIN/RST) flow keeps that reason; otherwise the deadline reached first names it
        # (idle: last + idle_timeout, active: first + active_timeout), whatever the batch cut.
        seg_first_ts = np.where(carried, o_first[sfi], t[sfi])
        prev_first = np.where(key_first, o_first, seg_first_ts[np.maximum(seg - 1, 0)])
        # a flow the responder never answered times out after half_open_timeout_s instead
        idle_prev = np.where(~resp_before & (half_ns > 0), half_ns, idle_ns)
        idle_first = prev_t + idle_prev <= prev_first + active_ns
        ended_reason = np.where(
            term_before,
            np.where(_prev_term_rst(seg, key_first, term_rst_seg, o_termrst), END_RST, END_FIN),
            np.where(idle_first, IDLE, fs.active_reason()),
        )
        ends_open = brk & key_first & has_open  # the table's open flow ends before this packet

        # --- aggregate per segment and direction
        init_lo = np.where(carried, T["init_lo"][sl[sfi]], lo[sfi])
        d = (lo != init_lo[seg]).astype(np.int64)
        g = seg * 2 + d
        size = pk.size[order]
        A = _alloc(nseg)
        ng = nseg * 2
        for name, col in (("pk", None), ("by", size)):
            A[name].reshape(-1)[:] = np.bincount(g, weights=col, minlength=ng).astype(np.int64)
        A["pssq"].reshape(-1)[:] = np.bincount(g, weights=size.astype(np.float64) ** 2, minlength=ng)
        for name, bit in _FLAG_BITS:
            A[name].reshape(-1)[:] = np.bincount(g, weights=(fl & bit) != 0, minlength=ng).astype(np.int64)
        go = np.argsort(g, kind="stable")
        gs = g[go]
        tg = t[go]
        gstart = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
        gend = np.r_[gstart[1:] - 1, len(gs) - 1]
        present = gs[gstart]
        flat = {name: A[name].reshape(-1) for name in ("psmin", "psmax", "first", "last", "pmin", "pmax")}
        flat["psmin"][:] = _BIG
        flat["psmax"][:] = -1
        flat["first"][:] = -1
        flat["last"][:] = -1
        flat["pmin"][:] = _BIG
        flat["pmax"][:] = -1
        flat["psmin"][present] = np.minimum.reduceat(size[go], gstart)
        flat["psmax"][present] = np.maximum.reduceat(size[go], gstart)
        flat["first"][present] = tg[gstart]
        flat["last"][present] = tg[gend]
        # directional inter-arrival times (+ the gap to the open flow's last packet that way)
        same = gs[1:] == gs[:-1]
        p_g = gs[1:][same]
        p_v = (tg[1:] - tg[:-1])[same]
        if carried.any():
            cseg = np.flatnonzero(carried)
            cs_slot = sl[sfi[cseg]]
            for dd in (0, 1):
                olast = T["last"][cs_slot, dd]
                ofirst_g = cseg * 2 + dd
                has = (T["pk"][cs_slot, dd] > 0) & (flat["first"][ofirst_g] >= 0)
                p_g = np.r_[p_g, ofirst_g[has]]
                p_v = np.r_[p_v, np.maximum(flat["first"][ofirst_g[has]] - olast[has], 0)]
            po = np.argsort(p_g, kind="stable")
            p_g, p_v = p_g[po], p_v[po]
        _piat_into(A, "pn", "psum", "psq", "pmin", "pmax", p_g, p_v, ng, flat)
        # bidirectional
        A["bfirst"][:] = t[sfi]
        send = np.r_[sfi[1:] - 1, n - 1]
        A["blast"][:] = t[send]
        sameb = seg[1:] == seg[:-1]
        b_g = seg[1:][sameb]
        b_v = (t[1:] - t[:-1])[sameb]
        if carried.any():
            cseg = np.flatnonzero(carried)
            b_g = np.r_[b_g, cseg]
            b_v = np.r_[b_v, np.maximum(t[sfi[cseg]] - o_last[sfi[cseg]], 0)]
            bo = np.argsort(b_g, kind="stable")
            b_g, b_v = b_g[bo], b_v[bo]
        _piat_into(A, "bpn", "bpsum", "bpsq", "bpmin", "bpmax", b_g, b_v, nseg, None)

        # key, oriented by the initiator, from the segment's first packet
        fo = order[sfi]
        first_is_src = s_lt[fo] == init_lo
        A["init_lo"][:] = init_lo
        A["fam"][:] = pk.fam[fo]
        A["s_hi"][:] = np.where(first_is_src, pk.s_hi[fo], pk.d_hi[fo])
        A["s_lo"][:] = np.where(first_is_src, pk.s_lo[fo], pk.d_lo[fo])
        A["d_hi"][:] = np.where(first_is_src, pk.d_hi[fo], pk.s_hi[fo])
        A["d_lo"][:] = np.where(first_is_src, pk.d_lo[fo], pk.s_lo[fo])
        A["sport"][:] = np.where(first_is_src, pk.sport[fo], pk.dport[fo])
        A["dport"][:] = np.where(first_is_src, pk.dport[fo], pk.sport[fo])
        A["proto"][:] = pk.proto[fo]
        A["vlan"][:] = pk.vlan[fo]
        A["icmp"][:] = pk.icmp[fo]
        A["fin_lo"][:] = finlo_c[send]
        A["fin_hi"][:] = finhi_c[send]
        A["term_ts"][:] = term_ts_seg
        A["term_rst"][:] = term_rst_seg
        A["wall"][:] = wall

        # --- merge carried segments with what the table already holds
        if carried.any():
            cseg = np.flatnonzero(carried)
            cslot = sl[sfi[cseg]]
            _merge(A, cseg, T, cslot)

        # --- open flows that ended on this batch's first packet of their key
        if ends_open.any():
            pos = np.flatnonzero(ends_open)
            eslots = slot[pos]
            self._export_slots(eslots, ended_reason[pos])

        # --- segments: ended ones leave now, the last of each key stays open
        key_last_seg = np.r_[seg[np.flatnonzero(key_first)[1:] - 1], nseg - 1] if n else np.zeros(0, np.int64)
        stays = np.zeros(nseg, dtype=bool)
        stays[key_last_seg] = True
        ended_segs = np.flatnonzero(~stays)
        seg_key = k[sfi]
        if len(ended_segs):
            # reason of segment s is on the first packet of segment s+1 (same key)
            reasons = ended_reason[sfi[ended_segs + 1]]
            self._emit(A, ended_segs, reasons)
            # a carried slot whose flow ended inside the batch is free again
            cont_ended = ended_segs[carried[ended_segs]]
            if len(cont_ended):
                for s in sl[sfi[cont_ended]].tolist():
                    del self._index[self._keys[s]]
                    self._free.append(s)

        open_segs = np.flatnonzero(stays)
        reuse = carried[open_segs]
        up = open_segs[reuse]
        if len(up):
            uslots = sl[sfi[up]]
            for name in T:
                T[name][uslots] = A[name][up]
        new = open_segs[~reuse]
        if len(new):
            over = len(self._index) + len(new) - self.flow_settings.max_flows
            if over > 0:
                self._evict(over)
            over = len(self._index) + len(new) - self.flow_settings.max_flows
            if over > 0:  # the batch alone brings more new flows than fit: its oldest leave at once
                oldest = np.argsort(A["blast"][new], kind="stable")[:over]
                gone = new[oldest]
                self.counters.evicted += len(gone)
                self._emit(A, gone, np.full(len(gone), EVICTED))
                new = np.setdiff1d(new, gone)
            self._grow(len(new))
            T = self._t
            nslots = np.array([self._free.pop() for _ in range(len(new))], dtype=np.int64)
            for name in T:
                T[name][nslots] = A[name][new]
            for s, ki in zip(nslots.tolist(), seg_key[new].tolist(), strict=True):
                kb = key_bytes[ki]
                self._index[kb] = s
                self._keys[s] = kb

    def _evict(self, count: int) -> None:
        slots = self._occupied()
        count = min(count, len(slots))
        if count <= 0:
            return
        last = self._t["blast"][slots]
        pick = np.argpartition(last, count - 1)[:count] if count < len(slots) else np.arange(len(slots))
        self.counters.evicted += count
        self._export_slots(slots[pick], np.full(count, EVICTED, dtype=np.int64))


def _export_order(cols: Cols, idx: I64, by_first: bool) -> I64:
    """Deterministic order of rows `idx`: by last (or first) seen, then first (or last) seen,
    then the key, so ties never depend on table slots or batch cuts."""
    a, b = ("bfirst", "blast") if by_first else ("blast", "bfirst")
    keys = [cols[f][idx] for f in ("dport", "sport", "d_lo", "d_hi", "s_lo", "s_hi", "proto", "vlan", b, a)]
    order: I64 = np.lexsort(keys)
    return order


def _unique_rows(kmat: npt.NDArray[np.uint64]) -> tuple[I64, I64]:
    """(a row index per distinct key, key number of every row) for rows of key words.

    Grouping runs on a 64-bit hash of the words (a fast integer sort instead of a 56-byte
    comparison sort); a hash shared by different keys is detected and then the exact way is used.
    """
    with np.errstate(over="ignore"):
        h = np.zeros(len(kmat), dtype=np.uint64)
        for j in range(kmat.shape[1]):
            h = wire.splitmix64(h ^ kmat[:, j])
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.ravel()
    if np.array_equal(kmat[first[inv]], kmat):
        return first.astype(np.int64), inv.astype(np.int64)
    kview = kmat.view(np.dtype((np.void, kmat.shape[1] * 8))).ravel()
    _, first, inv = np.unique(kview, return_index=True, return_inverse=True)
    return first.astype(np.int64), inv.ravel().astype(np.int64)


def _prev_term_rst(seg: I64, key_first: B, term_rst_seg: B, o_termrst: B) -> B:
    """RST (vs FIN) of the flow that ends just before each packet."""
    prev_seg = np.maximum(seg - 1, 0)
    return np.where(key_first, o_termrst, term_rst_seg[prev_seg])


def _piat_into(
    A: Cols, n_: str, s_: str, q_: str, mn: str, mx: str, g: I64, v: I64, ng: int, flat: Any
) -> None:
    """Inter-arrival stats per group from (group, value) pairs sorted by group."""
    tgt = flat if flat is not None else {}
    an = A[n_].reshape(-1)
    an[:] = np.bincount(g, minlength=ng)
    A[s_].reshape(-1)[:] = np.bincount(g, weights=v, minlength=ng).astype(np.int64)
    A[q_].reshape(-1)[:] = np.bincount(g, weights=v.astype(np.float64) ** 2, minlength=ng)
    amin = tgt.get(mn, A[mn].reshape(-1))
    amax = tgt.get(mx, A[mx].reshape(-1))
    amin[:] = _BIG
    amax[:] = -1
    if len(g):
        st = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        amin[g[st]] = np.minimum.reduceat(v, st)
        amax[g[st]] = np.maximum.reduceat(v, st)


def _merge(A: Cols, segs: I64, T: Cols, slots: I64) -> None:
    """Fold a carried segment's batch aggregates into the table row it continues."""
    for name in _SUM_FIELDS:
        A[name][segs] += T[name][slots]
    for name in ("bpn", "bpsum", "bpsq"):
        A[name][segs] += T[name][slots]
    for name in _MIN_FIELDS:
        A[name][segs] = np.minimum(A[name][segs], T[name][slots])
    A["bpmin"][segs] = np.minimum(A["bpmin"][segs], T["bpmin"][slots])
    for name in _MAX_FIELDS:
        A[name][segs] = np.maximum(A[name][segs], T[name][slots])
    A["bpmax"][segs] = np.maximum(A["bpmax"][segs], T["bpmax"][slots])
    old_first = T["first"][slots]
    A["first"][segs] = np.where(T["pk"][slots] > 0, old_first, A["first"][segs])
    # max(): a capture whose clock steps back must not give negative durations
    A["last"][segs] = np.maximum(A["last"][segs], T["last"][slots])
    A["bfirst"][segs] = T["bfirst"][slots]
    A["blast"][segs] = np.maximum(A["blast"][segs], T["blast"][slots])
    for name in ("init_lo", "fam", "s_hi", "s_lo", "d_hi", "d_lo", "sport", "dport", "proto", "vlan", "icmp"):
        A[name][segs] = T[name][slots]


SegState = tuple[B, I64, I64, B, B, I64, B, B, B, B]


def _idle_ns(fs: FlowSettings, unanswered: B) -> I64:
    """Idle timeout per flow: `half_open_timeout_s` while the responder has sent nothing (when on)."""
    idle = int(fs.idle_timeout_s * 1e9)
    half = int(fs.half_open_timeout_s * 1e9)
    if half <= 0:
        return np.full(len(unanswered), idle, dtype=np.int64)
    return np.where(unanswered, min(half, idle), idle).astype(np.int64)


@dataclass(frozen=True)
class HalfOpen:
    """What the half-open rule needs per key-sorted packet: the gap to the key's previous packet,
    its direction, and the open flow's initiator side and whether its responder has answered."""

    ns: int  # 0 = off
    gap: I64
    lo: B
    o_initlo: B
    o_resp: B


@dataclass(frozen=True)
class SplitInput:
    """What both splitters read: per key-sorted packet arrays (time, TCP flags, the open flow's
    state at the key's first packet) and the timeouts in ns."""

    key_first: B
    has_open: B
    t: I64
    rst: B
    fin_lo: B
    fin_hi: B
    syn_only: B
    o_first: I64
    o_last: I64
    o_finlo: B
    o_finhi: B
    o_term: I64
    o_termrst: B
    idle_ns: int
    linger_ns: int
    active_ns: int
    half: HalfOpen


def _seg_cumany(x: B, seg_first_of_pkt: I64) -> B:
    """Running OR of x restarted at each segment's first packet."""
    cs: I64 = np.cumsum(x, dtype=np.int64)
    base: I64 = cs[seg_first_of_pkt] - x[seg_first_of_pkt]
    out: B = (cs - base) > 0
    return out


def _segment(s: SplitInput, brk: B, rounds: int, compute_only: bool = False) -> SegState | None:
    """Split key-sorted packets into flows, adding one split per flow per round until stable.

    Returns None when `rounds` is exhausted (a pathological batch); the caller then uses the
    sequential splitter. With compute_only it only computes the state for the given splits.

    Half-open splits (a gap > `half.ns` while the responder has not answered) are all added in
    one round: another split earlier in the same flow can only make a later one more certain.
    """
    key_first, t, rst, half = s.key_first, s.t, s.rst, s.half
    brk = brk.copy()
    for rnd in range(rounds + 1):
        start = key_first | brk
        seg = np.cumsum(start) - 1
        sfi = np.flatnonzero(start)
        carried = ~brk[sfi]
        first_of_pkt = sfi[seg]
        c_pkt = carried[seg]
        seg_first_ts = np.where(carried, s.o_first[sfi], t[sfi])
        flo = _seg_cumany(s.fin_lo, first_of_pkt) | (c_pkt & s.o_finlo[first_of_pkt])
        fhi = _seg_cumany(s.fin_hi, first_of_pkt) | (c_pkt & s.o_finhi[first_of_pkt])
        rst_c = _seg_cumany(rst, first_of_pkt)
        c_term = carried & (s.o_term[sfi] >= 0)
        term_active = rst_c | (flo & fhi) | c_term[seg]
        # first terminating packet per segment (for segments not already closed when carried)
        tidx = np.flatnonzero(term_active)
        term_ts_seg = np.full(len(sfi), -1, dtype=np.int64)
        term_rst_seg = np.zeros(len(sfi), dtype=bool)
        if len(tidx):
            tseg = seg[tidx]
            firsts = np.r_[True, tseg[1:] != tseg[:-1]]
            ft = tidx[firsts]
            term_ts_seg[tseg[firsts]] = t[ft]
            term_rst_seg[tseg[firsts]] = rst_c[ft]
        term_ts_seg = np.where(c_term, s.o_term[sfi], term_ts_seg)
        term_rst_seg = np.where(c_term, s.o_termrst[sfi], term_rst_seg)
        # was the flow before this packet (same key) already closed by FIN/RST?
        term_before = np.zeros(len(t), dtype=bool)
        term_before[1:] = term_active[:-1] & ~key_first[1:]
        term_before |= key_first & (s.o_term >= 0)
        # did the responder send anything in this flow before this packet?
        init_seg = np.where(carried, half.o_initlo[sfi], half.lo[sfi])
        resp_upto = _seg_cumany(half.lo != init_seg[seg], first_of_pkt) | (c_pkt & half.o_resp[first_of_pkt])
        # (at a split: whether the flow that ends there had an answer, which names its end reason)
        resp_before = np.empty(len(t), dtype=bool)
        resp_before[0] = False
        resp_before[1:] = resp_upto[:-1]
        resp_before = np.where(key_first, half.o_resp, resp_before)
        state = (brk, seg, sfi, carried, term_before, term_ts_seg, term_rst_seg, flo, fhi, resp_before)
        if compute_only:
            return state
        if rnd == rounds:
            break
        closing = term_before & ((t > term_ts_seg[seg] + s.linger_ns) | s.syn_only)
        too_old = t - seg_first_ts[seg] > s.active_ns
        half_cand = (half.gap > half.ns) & ~resp_before & ~brk if half.ns > 0 else np.zeros(len(t), bool)
        cand = (closing | too_old | half_cand) & ~brk
        ci = np.flatnonzero(cand)
        if not len(ci):
            return state
        cseg = seg[ci]
        firsts = np.r_[True, cseg[1:] != cseg[:-1]]
        brk[ci[firsts]] = True
        brk |= half_cand
    return None


def _segment_sequential(s: SplitInput) -> B:
    """Reference splitter, one packet at a time: the oracle for `_segment` in tests and the
    fallback for batches that need many splits of one key."""
    n = len(s.t)
    brk = np.zeros(n, dtype=bool)
    first = last = term = 0
    flo = fhi = False
    init = resp = False
    tl, rl, fl, fh, so = (
        s.t.tolist(),
        s.rst.tolist(),
        s.fin_lo.tolist(),
        s.fin_hi.tolist(),
        s.syn_only.tolist(),
    )
    lol = s.half.lo.tolist()
    for i in range(n):
        if s.key_first[i]:
            if s.has_open[i]:
                first, last, flo, fhi, term = (
                    int(s.o_first[i]),
                    int(s.o_last[i]),
                    bool(s.o_finlo[i]),
                    bool(s.o_finhi[i]),
                    int(s.o_term[i]),
                )
                init, resp = bool(s.half.o_initlo[i]), bool(s.half.o_resp[i])
                new = False
            else:
                new = True
        else:
            new = False
        ti = tl[i]
        if not new and (
            ti - last > s.idle_ns
            or (s.half.ns > 0 and not resp and ti - last > s.half.ns)
            or (term >= 0 and (ti > term + s.linger_ns or so[i]))
            or ti - first > s.active_ns
        ):
            new = True
        if new:
            brk[i] = True
            first, flo, fhi, term = ti, False, False, -1
            init, resp = lol[i], False
        last = ti
        resp = resp or lol[i] != init
        flo = flo or fl[i]
        fhi = fhi or fh[i]
        if term < 0 and (rl[i] or (flo and fhi)):
            term = ti
    return brk


def _stats(n: I64, s: I64 | F64, sq: F64, div: float) -> tuple[F64, F64]:
    """Mean and sample standard deviation (NFStream's n-1) from count, sum and sum of squares."""
    nf = n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s / np.maximum(nf, 1), 0.0)
        var = np.where(n > 1, (sq - nf * mean * mean) / np.maximum(nf - 1, 1), 0.0)
    return mean / div, np.sqrt(np.maximum(var, 0.0)) / div


def feature_arrays(rows: Cols) -> dict[str, np.ndarray[Any, Any]]:
    """The 53 features of every row, one array per feature name."""
    out: dict[str, Any] = {}
    pk, by = rows["pk"], rows["by"]
    bpk = pk.sum(axis=1)
    sides = (("src2dst", 0), ("dst2src", 1))
    # bidirectional
    out["bidirectional_packets"] = bpk
    out["bidirectional_bytes"] = by.sum(axis=1)
    out["bidirectional_duration_ms"] = (rows["blast"] - rows["bfirst"]) / 1e6
    psmin = rows["psmin"].min(axis=1)
    out["bidirectional_min_ps"] = np.where(psmin == _BIG, 0, psmin).astype(np.float64)
    mean, sd = _stats(bpk, by.sum(axis=1), rows["pssq"].sum(axis=1), 1.0)
    out["bidirectional_mean_ps"] = mean
    out["bidirectional_stddev_ps"] = sd
    out["bidirectional_max_ps"] = np.maximum(rows["psmax"].max(axis=1), 0).astype(np.float64)
    out["bidirectional_min_piat_ms"] = np.where(rows["bpmin"] == _BIG, 0, rows["bpmin"]) / 1e6
    mean, sd = _stats(rows["bpn"], rows["bpsum"], rows["bpsq"], 1e6)
    out["bidirectional_mean_piat_ms"] = mean
    out["bidirectional_stddev_piat_ms"] = sd
    out["bidirectional_max_piat_ms"] = np.maximum(rows["bpmax"], 0) / 1e6
    for name, _bit in _FLAG_BITS:
        out[f"bidirectional_{name}_packets"] = rows[name].sum(axis=1)
    for side, d in sides:
        n = pk[:, d]
        out[f"{side}_packets"] = n
        out[f"{side}_bytes"] = by[:, d]
        out[f"{side}_duration_ms"] = np.where(n > 0, rows["last"][:, d] - rows["first"][:, d], 0) / 1e6
        mn = rows["psmin"][:, d]
        out[f"{side}_min_ps"] = np.where(mn == _BIG, 0, mn).astype(np.float64)
        mean, sd = _stats(n, by[:, d], rows["pssq"][:, d], 1.0)
        out[f"{side}_mean_ps"] = mean
        out[f"{side}_stddev_ps"] = sd
        out[f"{side}_max_ps"] = np.maximum(rows["psmax"][:, d], 0).astype(np.float64)
        pmin = rows["pmin"][:, d]
        out[f"{side}_min_piat_ms"] = np.where(pmin == _BIG, 0, pmin) / 1e6
        mean, sd = _stats(rows["pn"][:, d], rows["psum"][:, d], rows["psq"][:, d], 1e6)
        out[f"{side}_mean_piat_ms"] = mean
        out[f"{side}_stddev_piat_ms"] = sd
        out[f"{side}_max_piat_ms"] = np.maximum(rows["pmax"][:, d], 0) / 1e6
        for name, _bit in _FLAG_BITS:
            out[f"{side}_{name}_packets"] = rows[name][:, d]
    is_icmp = np.isin(rows["proto"], (1, 58))
    out["dst_port"] = np.where(is_icmp, 0, rows["dport"])
    out["protocol"] = rows["proto"]
    return {name: np.asarray(v) for name, v in out.items()}


def build_records(rows: Cols, reasons: I64, table: FlowTable) -> list[flow_pb2.FlowRecord]:
    """FlowRecords for aggregated rows (one per row), built with NumPy (wire.py)."""
    proto = rows["proto"]
    ported = np.isin(proto, PORTED)
    is_icmp = np.isin(proto, (1, 58))
    icmp = rows["icmp"]
    return wire.records(
        fam=rows["fam"],
        s_hi=rows["s_hi"],
        s_lo=rows["s_lo"],
        d_hi=rows["d_hi"],
        d_lo=rows["d_lo"],
        sport=np.where(ported, rows["sport"], np.where(is_icmp, icmp >> 8, 0)),
        dport=np.where(ported, rows["dport"], np.where(is_icmp, icmp & 0xFF, 0)),
        proto=proto,
        vlan=rows["vlan"],
        first_ns=rows["bfirst"],
        last_ns=rows["blast"],
        reasons=np.asarray(reasons),
        captured_ns=rows["wall"],
        feats=feature_arrays(rows),
        node_id=table.node_id,
        interface=table.interface,
    )


# ---------------------------------------------------------------------- offline extraction
@dataclass
class Extraction:
    """Result of reading captures: every flow in export order, counts, and the first error."""

    records: list[flow_pb2.FlowRecord]
    stats: dict[str, Any]
    error: InputError | None = None


def extract_flows(paths: Sequence[Path | str], settings: SnifferSettings | None = None) -> Extraction:
    """Flows of pcap/pcapng files, each file its own table; stops at the first damaged file."""
    settings = settings or SnifferSettings()
    chunk = settings.capture.chunk_packets
    t0 = time.perf_counter()
    records: list[flow_pb2.FlowRecord] = []
    totals = TableCounters()
    error: InputError | None = None
    files = 0
    for path in paths:
        try:
            cap = read_capture(path)
        except CaptureFileError as exc:
            error = exc
            break
        files += 1
        table = FlowTable(settings, interface=Path(path).name)
        for lo in range(0, cap.packets, chunk):
            hi = min(lo + chunk, cap.packets)
            pk = decode(
                cap.data, cap.offsets[lo:hi], cap.caplens[lo:hi], cap.ts_ns[lo:hi], cap.linktypes[lo:hi]
            )
            table.add_packets(pk)
            records.extend(table.expire(int(cap.ts_ns[hi - 1])))
        records.extend(table.flush())
        add_counters(totals, table.counters)
        if cap.error is not None:
            error = cap.error
            break
    seconds = time.perf_counter() - t0
    stats: dict[str, Any] = {
        "files": files,
        "packets": totals.packets,
        "bytes": totals.bytes,
        "ip_packets": totals.ip_packets,
        "flows": len(records),
        "malformed": {k: v for k, v in totals.malformed.items() if v},
        "end_reasons": dict(sorted(totals.exported_by_reason.items())),
        "seconds": round(seconds, 6),
        "packets_per_s": round(totals.packets / seconds, 1) if seconds > 0 else 0.0,
    }
    return Extraction(records, stats, error)


def add_counters(into: TableCounters, c: TableCounters) -> None:
    into.packets += c.packets
    into.bytes += c.bytes
    into.ip_packets += c.ip_packets
    into.flows_exported += c.flows_exported
    into.evicted += c.evicted
    into.late_flows_absorbed += c.late_flows_absorbed
    into.late_packets_absorbed += c.late_packets_absorbed
    for k, v in c.malformed.items():
        into.malformed[k] = into.malformed.get(k, 0) + v
    for k, v in c.exported_by_reason.items():
        into.exported_by_reason[k] = into.exported_by_reason.get(k, 0) + v
