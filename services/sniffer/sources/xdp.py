"""XDP capture: the kernel keeps the flow table, user space exports one record per flow.

The program (services/sniffer/bpf/xdp_flow.c) counts every packet into an LRU hash keyed by the
canonical flow key and always passes the packet. Flows that end on a packet (TCP FIN both ways,
RST, a packet after the idle/active timeout) arrive whole on the ring buffer; flows that just go
quiet are found by the sweep every `xdp.sweep_interval_ms`. Each exported entry is taken out of the
map atomically (lookup-and-delete), so no packet is counted twice or lost between read and delete.
Waiting for the sweep would add up to a sweep interval of delay, so TERM notices (FIN both ways,
RST) schedule a check of that one entry at close + `flows.tcp_close_linger_s` (when the linger is
shorter than the sweep interval), and with `flows.half_open_timeout_s` START notices one at its
half-open deadline (a heap of due times; a lost notice is still caught by the sweep). The sweep
reads the whole map, so it is needed only for the idle/active timeouts and can run rarely.
Records pass the same tombstone filter as flows.py's (`flows.tombstone_ttl_s`).

On start a program of ours left attached by a crash is detached first (reconcile with the kernel);
someone else's program is never replaced.
"""

from __future__ import annotations

import ctypes
import hashlib
import heapq
import logging
import math
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from libs.common.events import community_id
from libs.common.lifecycle import StopFlag
from ml_defender.v1 import flow_pb2
from services.sniffer import libbpf
from services.sniffer.bpf import build
from services.sniffer.errors import SourceError
from services.sniffer.flows import Tombstones

if TYPE_CHECKING:
    from services.sniffer.config import SnifferSettings

log = logging.getLogger(__name__)

PROG_NAME = "mld_xdp_flow"
_REASONS: dict[int, int] = {
    libbpf.END_IDLE: flow_pb2.END_REASON_IDLE,
    libbpf.END_ACTIVE: flow_pb2.END_REASON_ACTIVE,
    libbpf.END_FIN: flow_pb2.END_REASON_FIN,
    libbpf.END_RST: flow_pb2.END_REASON_RST,
}
_FLAG_NAMES = ("syn", "ack", "psh", "rst", "fin", "urg")
_KEY_NP = np.dtype(libbpf.FlowKey)
_VALUE_NP = np.dtype(libbpf.FlowValue)
_EVENT_NP = np.dtype(libbpf.FlowEvent)
_KEY_SIZE = ctypes.sizeof(libbpf.FlowKey)
_VALUE_SIZE = ctypes.sizeof(libbpf.FlowValue)
F64 = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class Piat:
    """Inter-arrival times of a flow or direction: count, min, max, sum, sum of squares (ns)."""

    n: int = 0
    min_ns: int = 0
    max_ns: int = 0
    sum_ns: int = 0
    sumsq: int = 0


@dataclass(frozen=True)
class Direction:
    """One direction's counters."""

    packets: int = 0
    bytes: int = 0
    ps_min: int = 0
    ps_max: int = 0
    ps_sumsq: int = 0
    first_ns: int = 0
    last_ns: int = 0
    piat: Piat = Piat()
    flags: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)  # syn ack psh rst fin urg


@dataclass(frozen=True)
class FlowCounters:
    """A flow's key and counters as plain numbers; times on the capture clock (ns)."""

    src_addr: bytes
    dst_addr: bytes
    src_port: int
    dst_port: int
    protocol: int
    vlan_id: int
    first_ns: int
    last_ns: int
    piat: Piat
    dirs: tuple[Direction, Direction]


def _mean_sd(n: int, total: float, sumsq: float, scale: float) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1), with the float steps of flows.py's `_stats`."""
    if n <= 0:
        return 0.0, 0.0
    nf = float(n)
    mean = float(total) / nf
    var = (float(sumsq) - nf * mean * mean) / (nf - 1) if n > 1 else 0.0
    return mean * scale, math.sqrt(max(var, 0.0)) * scale


def features_from_counters(c: FlowCounters) -> dict[str, float | int]:
    """The 53 features (DESIGN.md section 4) from aggregated counters, as flows.py computes them."""
    ms = 1e-6
    out: dict[str, float | int] = {}
    d0, d1 = c.dirs
    n = d0.packets + d1.packets
    by = d0.bytes + d1.bytes
    present = [d for d in c.dirs if d.packets]
    out["bidirectional_packets"] = n
    out["bidirectional_bytes"] = by
    out["bidirectional_duration_ms"] = (c.last_ns - c.first_ns) * ms
    out["bidirectional_min_ps"] = float(min((d.ps_min for d in present), default=0))
    mean, sd = _mean_sd(n, by, float(d0.ps_sumsq + d1.ps_sumsq), 1.0)
    out["bidirectional_mean_ps"] = mean
    out["bidirectional_stddev_ps"] = sd
    out["bidirectional_max_ps"] = float(max((d.ps_max for d in present), default=0))
    _piat_features(out, "bidirectional", c.piat)
    for i, name in enumerate(_FLAG_NAMES):
        out[f"bidirectional_{name}_packets"] = d0.flags[i] + d1.flags[i]
    for side, d in (("src2dst", d0), ("dst2src", d1)):
        out[f"{side}_packets"] = d.packets
        out[f"{side}_bytes"] = d.bytes
        out[f"{side}_duration_ms"] = (d.last_ns - d.first_ns) * ms if d.packets else 0.0
        out[f"{side}_min_ps"] = float(d.ps_min if d.packets else 0)
        mean, sd = _mean_sd(d.packets, d.bytes, float(d.ps_sumsq), 1.0)
        out[f"{side}_mean_ps"] = mean
        out[f"{side}_stddev_ps"] = sd
        out[f"{side}_max_ps"] = float(d.ps_max if d.packets else 0)
        _piat_features(out, side, d.piat)
        for i, name in enumerate(_FLAG_NAMES):
            out[f"{side}_{name}_packets"] = d.flags[i]
    out["dst_port"] = 0 if c.protocol in (1, 58) else c.dst_port
    out["protocol"] = c.protocol
    return out


def _piat_features(out: dict[str, float | int], side: str, p: Piat) -> None:
    ms = 1e-6
    out[f"{side}_min_piat_ms"] = p.min_ns * ms if p.n else 0.0
    mean, sd = _mean_sd(p.n, p.sum_ns, float(p.sumsq), ms)
    out[f"{side}_mean_piat_ms"] = mean
    out[f"{side}_stddev_piat_ms"] = sd
    out[f"{side}_max_piat_ms"] = p.max_ns * ms if p.n else 0.0


def record_from_counters(
    c: FlowCounters, end_reason: int, clock_offset_ns: int, node_id: str, interface: str
) -> flow_pb2.FlowRecord:
    """A FlowRecord like the user-space table's; `clock_offset_ns` maps capture time to wall time."""
    first = c.first_ns + clock_offset_ns
    last = c.last_ns + clock_offset_ns
    key_bytes = c.src_addr + c.dst_addr + bytes([c.protocol]) + c.vlan_id.to_bytes(2, "big")
    key_bytes += c.src_port.to_bytes(2, "big") + c.dst_port.to_bytes(2, "big")
    flow_id = int.from_bytes(
        hashlib.blake2b(key_bytes + first.to_bytes(8, "big", signed=True), digest_size=8).digest(), "big"
    ) & ((1 << 63) - 1)
    return flow_pb2.FlowRecord(
        flow_id=flow_id,
        community_id=community_id(c.src_addr, c.dst_addr, c.src_port, c.dst_port, c.protocol),
        key=flow_pb2.FlowKey(
            src_addr=c.src_addr,
            dst_addr=c.dst_addr,
            src_port=c.src_port,
            dst_port=c.dst_port,
            protocol=c.protocol,
            vlan_id=c.vlan_id,
        ),
        first_seen_ns=first,
        last_seen_ns=last,
        end_reason=end_reason,
        node_id=node_id,
        interface=interface,
        features=flow_pb2.FlowFeatures(**features_from_counters(c)),
        captured_ns=last,
    )


def _piat(p: libbpf.Piat, n: int) -> Piat:
    return Piat(
        n=max(n, 0),
        min_ns=int(p.min_ns),
        max_ns=int(p.max_ns),
        sum_ns=int(p.sum_ns),
        sumsq=int(p.sumsq_lo) | (int(p.sumsq_hi) << 64),
    )


def _direction(d: libbpf.Dir) -> Direction:
    return Direction(
        packets=int(d.packets),
        bytes=int(d.bytes),
        ps_min=int(d.ps_min),
        ps_max=int(d.ps_max),
        ps_sumsq=int(d.ps_sumsq),
        first_ns=int(d.first_ns),
        last_ns=int(d.last_ns),
        piat=_piat(d.piat, int(d.packets) - 1),
        flags=(int(d.syn), int(d.ack), int(d.psh), int(d.rst), int(d.fin), int(d.urg)),
    )


def counters_from_kernel(key: libbpf.FlowKey, value: libbpf.FlowValue) -> FlowCounters:
    """The kernel's key and value as plain Python numbers (times still on the monotonic clock)."""
    alen = 4 if key.ip_version == 4 else 16
    proto = int(key.protocol)
    sport, dport = int(key.src_port), int(key.dst_port)
    if proto in (1, 58):
        sport, dport = int(value.icmp) >> 8, int(value.icmp) & 0xFF
    dirs = (_direction(value.dir[0]), _direction(value.dir[1]))
    return FlowCounters(
        src_addr=bytes(key.src_addr[:alen]),
        dst_addr=bytes(key.dst_addr[:alen]),
        src_port=sport,
        dst_port=dport,
        protocol=proto,
        vlan_id=int(key.vlan_id),
        first_ns=int(value.first_ns),
        last_ns=int(value.last_ns),
        piat=_piat(value.piat, dirs[0].packets + dirs[1].packets - 1),
        dirs=dirs,
    )


def _mean_sd_cols(n: Any, total: Any, sumsq: F64, scale: float) -> tuple[F64, F64]:
    """Vectorised `_mean_sd` (same float steps, so the same values)."""
    nf = n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, total.astype(np.float64) / np.maximum(nf, 1), 0.0)
        var = np.where(n > 1, (sumsq - nf * mean * mean) / np.maximum(nf - 1, 1), 0.0)
    return mean * scale, np.sqrt(np.maximum(var, 0.0)) * scale


def _sumsq128(p: Any) -> F64:
    """The 128-bit sum of squares as float64, exactly rounded (the rare rows past 64 bits in Python)."""
    lo, hi = p["sumsq_lo"], p["sumsq_hi"]
    out: F64 = lo.astype(np.float64)
    for idx in zip(*np.nonzero(hi), strict=True):
        out[idx] = float(int(lo[idx]) | (int(hi[idx]) << 64))
    return out


def feature_columns(values: Any) -> dict[str, Any]:
    """The 53 features of many kernel values at once (`features_from_counters`, vectorised)."""
    ms = 1e-6
    d = values["dir"]
    pk = d["packets"].astype(np.int64)
    by = d["bytes"].astype(np.int64)
    has = pk > 0
    out: dict[str, Any] = {}
    bpk = pk.sum(axis=1)
    bby = by.sum(axis=1)
    out["bidirectional_packets"] = bpk
    out["bidirectional_bytes"] = bby
    out["bidirectional_duration_ms"] = (
        values["last_ns"].astype(np.int64) - values["first_ns"].astype(np.int64)
    ) * ms
    big = np.iinfo(np.int64).max
    psmin = np.where(has, d["ps_min"].astype(np.int64), big).min(axis=1)
    out["bidirectional_min_ps"] = np.where(psmin == big, 0, psmin).astype(np.float64)
    mean, sd = _mean_sd_cols(bpk, bby, d["ps_sumsq"].astype(np.float64).sum(axis=1), 1.0)
    out["bidirectional_mean_ps"] = mean
    out["bidirectional_stddev_ps"] = sd
    out["bidirectional_max_ps"] = (
        np.where(has, d["ps_max"].astype(np.int64), 0).max(axis=1).astype(np.float64)
    )
    _piat_cols(out, "bidirectional", values["piat"], np.maximum(bpk - 1, 0))
    for name in _FLAG_NAMES:
        out[f"bidirectional_{name}_packets"] = d[name].astype(np.int64).sum(axis=1)
    for side, i in (("src2dst", 0), ("dst2src", 1)):
        n = pk[:, i]
        out[f"{side}_packets"] = n
        out[f"{side}_bytes"] = by[:, i]
        span = d["last_ns"][:, i].astype(np.int64) - d["first_ns"][:, i].astype(np.int64)
        out[f"{side}_duration_ms"] = np.where(n > 0, span, 0) * ms
        out[f"{side}_min_ps"] = np.where(n > 0, d["ps_min"][:, i], 0).astype(np.float64)
        mean, sd = _mean_sd_cols(n, by[:, i], d["ps_sumsq"][:, i].astype(np.float64), 1.0)
        out[f"{side}_mean_ps"] = mean
        out[f"{side}_stddev_ps"] = sd
        out[f"{side}_max_ps"] = np.where(n > 0, d["ps_max"][:, i], 0).astype(np.float64)
        _piat_cols(out, side, d["piat"][:, i], np.maximum(n - 1, 0))
        for name in _FLAG_NAMES:
            out[f"{side}_{name}_packets"] = d[name][:, i].astype(np.int64)
    return out


def _piat_cols(out: dict[str, Any], side: str, p: Any, n: Any) -> None:
    ms = 1e-6
    out[f"{side}_min_piat_ms"] = np.where(n > 0, p["min_ns"].astype(np.int64), 0) * ms
    mean, sd = _mean_sd_cols(n, p["sum_ns"], _sumsq128(p), ms)
    out[f"{side}_mean_piat_ms"] = mean
    out[f"{side}_stddev_piat_ms"] = sd
    out[f"{side}_max_piat_ms"] = np.where(n > 0, p["max_ns"].astype(np.int64), 0) * ms


def records_from_arrays(
    keys: Any, values: Any, reasons: Any, clock_offset_ns: int, node_id: str, interface: str
) -> list[flow_pb2.FlowRecord]:
    """FlowRecords for kernel (key, value) rows; features vectorised, one protobuf per row."""
    n = len(keys)
    if n == 0:
        return []
    cols = feature_columns(values)
    proto = keys["protocol"].astype(np.int64)
    is_icmp = (proto == 1) | (proto == 58)
    icmp = values["icmp"].astype(np.int64)
    sport = np.where(is_icmp, icmp >> 8, keys["src_port"]).tolist()
    dport_key = np.where(is_icmp, icmp & 0xFF, keys["dst_port"])
    cols["dst_port"] = np.where(is_icmp, 0, keys["dst_port"]).astype(np.int64)
    cols["protocol"] = proto
    names = [f.name for f in flow_pb2.FlowFeatures.DESCRIPTOR.fields]
    columns = [np.asarray(cols[name]).tolist() for name in names]
    dport = dport_key.tolist()
    first = (values["first_ns"].astype(np.int64) + clock_offset_ns).tolist()
    last = (values["last_ns"].astype(np.int64) + clock_offset_ns).tolist()
    alen = np.where(keys["ip_version"] == 4, 4, 16).tolist()
    src_all, dst_all = keys["src_addr"], keys["dst_addr"]
    vlan = keys["vlan_id"].tolist()
    protol = proto.tolist()
    reason_l = np.asarray(reasons).tolist()
    FR, FK, FF = flow_pb2.FlowRecord, flow_pb2.FlowKey, flow_pb2.FlowFeatures
    recs: list[flow_pb2.FlowRecord] = []
    for i in range(n):
        src = src_all[i, : alen[i]].tobytes()
        dst = dst_all[i, : alen[i]].tobytes()
        key_bytes = src + dst + bytes([protol[i]]) + vlan[i].to_bytes(2, "big")
        key_bytes += sport[i].to_bytes(2, "big") + dport[i].to_bytes(2, "big")
        flow_id = int.from_bytes(
            hashlib.blake2b(key_bytes + first[i].to_bytes(8, "big", signed=True), digest_size=8).digest(),
            "big",
        ) & ((1 << 63) - 1)
        recs.append(
            FR(
                flow_id=flow_id,
                community_id=community_id(src, dst, sport[i], dport[i], protol[i]),
                key=FK(
                    src_addr=src,
                    dst_addr=dst,
                    src_port=sport[i],
                    dst_port=dport[i],
                    protocol=protol[i],
                    vlan_id=vlan[i],
                ),
                first_seen_ns=first[i],
                last_seen_ns=last[i],
                end_reason=reason_l[i],
                node_id=node_id,
                interface=interface,
                features=FF(**{nm: col[i] for nm, col in zip(names, columns, strict=True)}),
                captured_ns=last[i],
            )
        )
    return recs


@dataclass
class XdpCounters:
    """User-space side counts (the kernel's are read from the stats map)."""

    exported: int = 0
    exported_ringbuf: int = 0
    exported_sweep: int = 0
    exported_check: int = 0
    checks: int = 0
    checks_dropped: int = 0
    exported_at_stop: int = 0
    starts: int = 0
    terms: int = 0
    sweeps: int = 0
    sweep_races: int = 0
    map_entries: int = 0
    stale_detached: int = 0
    late_flows_absorbed: int = 0
    late_packets_absorbed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class XdpSource:
    """Capture source `xdp`: attach the flow meter to `capture.interface`, export its flows."""

    name = "xdp"

    def __init__(self, settings: SnifferSettings) -> None:
        self.settings = settings
        self.interface = settings.capture.interface
        self.mode = settings.xdp.mode
        self.max_entries = settings.xdp.map_max_entries
        self.counts = XdpCounters()
        self._pending: list[flow_pb2.FlowRecord] = []
        self._ended: list[bytes] = []
        self.tombstones = Tombstones(settings.flows)
        self._attached = False
        self._obj: libbpf.BpfObject | None = None
        self._rb: libbpf.RingBuffer | None = None
        try:
            self.ifindex = socket.if_nametoindex(self.interface)
        except OSError:
            raise SourceError(
                f"interface {self.interface!r} not found",
                "capture.interface",
                "name an existing interface (ip link)",
            ) from None
        self._ncpus = libbpf.num_possible_cpus()
        self._detach_stale()
        obj_path = build.ensure_object()
        self._checks: list[tuple[int, bytes]] = []  # heap of (due monotonic ns, key bytes)
        self._check_at: dict[bytes, int] = {}
        sizes = {"mld_flows": self.max_entries, "mld_events": settings.xdp.ringbuf_kib * 1024}
        self._obj = libbpf.BpfObject(obj_path, sizes)
        try:
            self._flows = self._obj.map("mld_flows", libbpf.FlowKey, libbpf.FlowValue)
            self._config = self._obj.map("mld_config", ctypes.c_uint32, libbpf.Config)
            self._stats = self._obj.map("mld_stats", ctypes.c_uint32, ctypes.c_uint64)
            self.update_settings(settings)
            self._rb = libbpf.RingBuffer(self._obj.map_fd("mld_events"), self._on_event)
            self._obj.attach_xdp(PROG_NAME, self.ifindex, self.mode)
            self._attached = True
        except BaseException:
            self.close()
            raise
        log.info(
            "xdp attached",
            extra={"interface": self.interface, "mode": self.mode, "map_max_entries": self.max_entries},
        )

    # -- settings and reconciliation ---------------------------------------------------------

    def update_settings(self, settings: SnifferSettings) -> None:
        """Apply the hot fields (flow timeouts, TCP close linger) to the running program."""
        fs = settings.flows
        cfg = libbpf.Config(
            idle_timeout_ns=int(fs.idle_timeout_s * 1e9),
            active_timeout_ns=fs.active_split_ns(),
            linger_ns=int(fs.tcp_close_linger_s * 1e9),
            start_notices=1,
            half_open_ns=int(fs.half_open_timeout_s * 1e9),
        )
        self._config.update(ctypes.c_uint32(0), cfg)
        self.tombstones.configure(fs)
        self.settings = settings

    def _detach_stale(self) -> None:
        """Detach our own program left behind by a crash; refuse to replace anyone else's."""
        for mode in ("generic", "native"):
            prog_id, name = libbpf.xdp_attached(self.ifindex, mode)
            if not prog_id:
                continue
            if name != PROG_NAME:
                raise SourceError(
                    f"interface {self.interface!r} already has XDP program {name or '?'} (id {prog_id}) in {mode} mode",
                    "capture.interface",
                    "detach it (ip link set dev IF xdp off) or capture on another interface",
                )
            log.warning(
                "detaching a stale mld XDP program (previous run did not stop cleanly)",
                extra={"interface": self.interface, "prog_id": prog_id, "mode": mode},
            )
            libbpf.xdp_detach(self.ifindex, mode)
            self.counts.stale_detached += 1

    # -- export -------------------------------------------------------------------------------

    def _emit(self, keys: bytes, values: bytes, reasons: list[int]) -> None:
        """Records for raw kernel keys/values (concatenated), in bulk."""
        n = len(reasons)
        if not n:
            return
        k = np.frombuffer(keys, dtype=_KEY_NP, count=n)
        v = np.frombuffer(values, dtype=_VALUE_NP, count=n)
        # CLOCK_MONOTONIC (bpf_ktime_get_ns) -> wall clock, read fresh so clock steps are followed
        offset = time.time_ns() - time.monotonic_ns()
        recs = records_from_arrays(k, v, reasons, offset, self.settings.node_id, self.interface)
        tomb = self.tombstones
        if tomb.ttl_ns > 0:  # late packets of just-closed connections, as flows.py absorbs them
            before = (tomb.flows_absorbed, tomb.packets_absorbed)
            recs = tomb.filter(recs)
            self.counts.late_flows_absorbed += tomb.flows_absorbed - before[0]
            self.counts.late_packets_absorbed += tomb.packets_absorbed - before[1]
        self._pending.extend(recs)
        for rec in recs:
            name = flow_pb2.EndReason.Name(rec.end_reason)[len("END_REASON_") :].lower()
            self.counts.by_reason[name] = self.counts.by_reason.get(name, 0) + 1

    def _half_ns(self) -> int:
        """The half-open timeout in ns when it is shorter than the idle timeout, else 0."""
        fs = self.settings.flows
        half, idle = int(fs.half_open_timeout_s * 1e9), int(fs.idle_timeout_s * 1e9)
        return half if 0 < half < idle else 0

    def _schedule(self, kb: bytes, at: int) -> None:
        """Check entry `kb` at monotonic time `at` (an earlier pending check is kept)."""
        cur = self._check_at.get(kb)
        if cur is not None and cur <= at:
            return
        if cur is None and len(self._check_at) >= self.max_entries:
            self.counts.checks_dropped += 1  # the sweep still finds it
            return
        self._check_at[kb] = at
        heapq.heappush(self._checks, (at, kb))

    def _on_event(self, data: bytes) -> None:
        kind = int.from_bytes(data[:4], "little")
        if kind == libbpf.EVENT_START:
            self.counts.starts += 1
            half = self._half_ns()
            if half:
                self._schedule(data[8 : 8 + _KEY_SIZE], time.monotonic_ns() + half + 1)
        elif kind == libbpf.EVENT_TERM:
            # Closed flows leave right after their linger when the sweep would come later (a
            # check is a syscall per flow: with a long linger the sweep is the cheaper way).
            self.counts.terms += 1
            linger = int(self.settings.flows.tcp_close_linger_s * 1e9)
            if linger < self.settings.xdp.sweep_interval_ms * 1_000_000:
                self._schedule(data[8 : 8 + _KEY_SIZE], time.monotonic_ns() + linger + 1)
        elif kind == libbpf.EVENT_END:
            self._ended.append(data[: _EVENT_NP.itemsize])

    def _flush_ended(self) -> None:
        """END notices received by the last poll -> records, in one vectorised step."""
        if not self._ended:
            return
        ev = np.frombuffer(b"".join(self._ended), dtype=_EVENT_NP)
        self._ended = []
        active = self.settings.flows.active_reason()  # the kernel's ACTIVE may be the export window
        reasons = [
            active if r == libbpf.END_ACTIVE else _REASONS.get(r, flow_pb2.END_REASON_UNSPECIFIED)
            for r in ev["reason"].tolist()
        ]
        self._emit(ev["key"].tobytes(), ev["c"].tobytes(), reasons)
        self.counts.exported_ringbuf += len(ev)

    def _due(self, value: Any, now: int) -> int:
        """End reason of an entry at monotonic time `now` (flows.py's expire rules), or 0."""
        fs = self.settings.flows
        if int(value.dir[0].packets) + int(value.dir[1].packets) == 0:
            return 0
        idle = int(fs.idle_timeout_s * 1e9)
        if int(value.dir[1].packets) == 0 and self._half_ns():
            idle = self._half_ns()
        if now - int(value.last_ns) > idle:
            return int(flow_pb2.END_REASON_IDLE)
        if value.term_ns and now > int(value.term_ns) + int(fs.tcp_close_linger_s * 1e9):
            return int(_REASONS.get(int(value.term_reason), flow_pb2.END_REASON_FIN))
        if now - int(value.first_ns) > fs.active_split_ns():
            return fs.active_reason()
        return 0

    def _next_check(self, value: Any) -> int:
        """When an entry that is not due yet should be looked at again (0: leave it to the sweep)."""
        due: list[int] = []
        half = self._half_ns()
        if half and int(value.dir[1].packets) == 0:
            due.append(int(value.last_ns) + half + 1)
        if value.term_ns:
            due.append(int(value.term_ns) + int(self.settings.flows.tcp_close_linger_s * 1e9) + 1)
        return min(due, default=0)

    def run_checks(self, now_mono_ns: int | None = None) -> int:
        """Entries whose scheduled check is due: export the ones that timed out, reschedule the
        ones that saw more packets; returns how many flows were exported."""
        now = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
        due_keys: list[bytes] = []
        while self._checks and self._checks[0][0] <= now:
            at, kb = heapq.heappop(self._checks)
            if self._check_at.get(kb) != at:
                continue  # superseded by an earlier check
            del self._check_at[kb]
            self.counts.checks += 1
            value = self._flows.lookup(libbpf.FlowKey.from_buffer_copy(kb))
            if value is None:
                continue  # ended in the kernel (END notice) or swept
            if self._due(value, now):
                due_keys.append(kb)
            elif nxt := self._next_check(value):
                self._schedule(kb, nxt)
        n = self._take(due_keys, now, everything=False)
        self.counts.exported_check += n
        self.counts.exported_sweep -= n  # _take counted them as swept
        return n

    def sweep(self, now_mono_ns: int | None = None, everything: bool = False) -> int:
        """Export flows that are due (or all when `everything`), taking their entries out of the map.

        The map is read in chunks (values viewed with NumPy, nothing built per entry); only due
        entries are taken, each with an atomic lookup-and-delete."""
        now = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
        fs = self.settings.flows
        idle_ns = int(fs.idle_timeout_s * 1e9)
        half_ns = self._half_ns()
        linger_ns = int(fs.tcp_close_linger_s * 1e9)
        active_ns = fs.active_split_ns()
        self.counts.sweeps += 1
        seen = 0
        due_keys: list[bytes] = []
        for kbuf, vbuf, n in self._flows.iter_batches():
            seen += n
            v = np.frombuffer(vbuf, dtype=_VALUE_NP, count=n)
            if everything:
                take = np.ones(n, dtype=bool)
            else:
                pk = v["dir"]["packets"].sum(axis=1)
                idle = np.where((v["dir"]["packets"][:, 1] == 0) & (half_ns > 0), half_ns, idle_ns)
                last = v["last_ns"].astype(np.int64)
                first = v["first_ns"].astype(np.int64)
                term = v["term_ns"].astype(np.int64)
                take = (pk > 0) & (
                    (now - last > idle) | ((term > 0) & (now > term + linger_ns)) | (now - first > active_ns)
                )
            raw = kbuf.tobytes()
            due_keys.extend(raw[i * _KEY_SIZE : (i + 1) * _KEY_SIZE] for i in np.flatnonzero(take).tolist())
        taken = self._take(due_keys, now, everything)
        self.counts.map_entries = max(seen - taken, 0)
        return taken

    def _take(self, due_keys: list[bytes], now: int, everything: bool) -> int:
        """Take the entries `due_keys` out of the map (atomically each) and export them."""
        keys_out: list[bytes] = []
        vals_out: list[bytes] = []
        reasons: list[int] = []
        for kb in due_keys:
            key = libbpf.FlowKey.from_buffer_copy(kb)
            value = self._flows.lookup_and_delete(key)
            if value is None:  # ended by a packet meanwhile: its END notice carries it
                continue
            reason = self._due(value, now)
            if not reason and not everything:
                # A packet replaced the entry between the read and the take: put the new flow back.
                self.counts.sweep_races += 1
                try:
                    self._flows.update(key, value, libbpf.BPF_NOEXIST)
                    continue
                except SourceError:
                    reason = int(flow_pb2.END_REASON_WINDOW)
            if not reason:
                if int(value.dir[0].packets) + int(value.dir[1].packets) == 0:
                    continue
                # end of capture: WINDOW, or FIN/RST when the flow had closed (as FlowTable.flush)
                reason = _REASONS.get(int(value.term_reason), 0) if value.term_ns else 0
                reason = reason or int(flow_pb2.END_REASON_WINDOW)
                self.counts.exported_at_stop += 1
            else:
                self.counts.exported_sweep += 1
            keys_out.append(kb)
            vals_out.append(bytes(value))
            reasons.append(reason)
        self._emit(b"".join(keys_out), b"".join(vals_out), reasons)
        return len(reasons)

    def _take_pending(self) -> list[flow_pb2.FlowRecord]:
        out, self._pending = self._pending, []
        self.counts.exported += len(out)
        return out

    def batches(self, stop: StopFlag) -> Iterator[list[flow_pb2.FlowRecord]]:
        """Records as flows end; on stop: detach, drain the ring buffer, export what is left."""
        rb = self._rb
        if rb is None:
            raise SourceError("the XDP source is closed", self.interface, "open a new source")
        next_sweep = time.monotonic_ns() + self.settings.xdp.sweep_interval_ms * 1_000_000
        flush_at = 0  # the service may hold the last records until its export interval has passed
        while not stop.is_set():
            wake = min(next_sweep, self._checks[0][0]) if self._checks else next_sweep
            if flush_at:
                wake = min(wake, flush_at)
            wait_ms = max(0, min(100, -(-(wake - time.monotonic_ns()) // 1_000_000)))
            rb.poll(int(wait_ms))
            self._flush_ended()
            now = time.monotonic_ns()
            if self._checks and self._checks[0][0] <= now:
                self.run_checks(now)
            if now >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic_ns() + self.settings.xdp.sweep_interval_ms * 1_000_000
            # an empty batch too: the service gets the chance to send a partial batch on time
            out = self._take_pending()
            now = time.monotonic_ns()
            if out:  # wake up once more when a partial batch of these is due, events or not
                flush_at = now + self.settings.flows.export_interval_ms * 1_000_000
            elif flush_at and now >= flush_at:
                flush_at = 0
            yield out
        yield from self.drain()

    def drain(self) -> Iterator[list[flow_pb2.FlowRecord]]:
        """Stop counting and export everything still in the map (end of capture: WINDOW)."""
        self._detach()
        if self._rb is not None:
            self._rb.consume()
            self._flush_ended()
        if self._obj is not None:
            self.sweep(everything=True)
        if self._pending:
            yield self._take_pending()

    # -- stats and teardown -------------------------------------------------------------------

    def kernel_stats(self) -> dict[str, int]:
        """The program's per-CPU counters summed, by name."""
        return {name: self._stats.percpu_u64(i, self._ncpus) for i, name in enumerate(libbpf.STAT_NAMES)}

    def stats(self) -> dict[str, int]:
        """Cumulative counts in the sources' shared vocabulary (packets, bytes, malformed_<reason>,
        end_<reason>, evicted, table_flows, map_entries, map_capacity) plus the XDP specifics."""
        k = self.kernel_stats() if self._obj is not None else dict.fromkeys(libbpf.STAT_NAMES, 0)
        c = self.counts
        out = {
            "packets": k["packets"],
            "bytes": k["bytes"],
            "ip_packets": k["flow_packets"],
            "ip_bytes": k["flow_bytes"],
            "flows": c.exported,
            "table_flows": c.map_entries,
            "map_entries": c.map_entries,
            "map_capacity": self.max_entries,
            "map_fill_permille": c.map_entries * 1000 // max(self.max_entries, 1),
            "flows_created": k["flows_created"],
            "flows_ended_in_kernel": k["flows_ended"],
            "flows_exported_ringbuf": c.exported_ringbuf,
            "flows_exported_sweep": c.exported_sweep,
            "flows_exported_check": c.exported_check,
            "checks": c.checks,
            "checks_dropped": c.checks_dropped,
            "checks_pending": len(self._check_at),
            "flows_exported_at_stop": c.exported_at_stop,
            "ringbuf_full": k["ringbuf_full"],
            "lost_packets": k["lost_packets"],
            "map_full": k["map_full"],
            "notice_lost": k["notice_lost"],
            "start_notices": c.starts,
            "term_notices": c.terms,
            "sweeps": c.sweeps,
            "sweep_races": c.sweep_races,
            "stale_detached": c.stale_detached,
            "late_flows_absorbed": c.late_flows_absorbed,
            "late_packets_absorbed": c.late_packets_absorbed,
        }
        # LRU evictions are silent in the kernel: created = ended + lost + taken + present + evicted.
        gone = (
            k["flows_ended"] + k["ringbuf_full"] + c.exported_sweep + c.exported_check + c.exported_at_stop
        ) + c.map_entries
        out["evicted"] = max(k["flows_created"] - gone, 0)
        out.update({f"malformed_{name}": k[name] for name in libbpf.MALFORMED})
        out.update({f"end_{name}": n for name, n in c.by_reason.items()})
        return out

    def _detach(self) -> None:
        if self._attached:
            try:
                libbpf.xdp_detach(self.ifindex, self.mode)
            except SourceError as exc:
                log.error("xdp detach failed", extra={"interface": self.interface, "error": exc.message})
            self._attached = False

    def close(self) -> None:
        """Detach and free everything; safe to call twice."""
        self._detach()
        if self._rb is not None:
            self._rb.close()
            self._rb = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None
