"""XDP capture: the kernel keeps the flow table, user space exports one record per flow.

The program (services/sniffer/bpf/xdp_flow.c) counts every packet into an LRU hash keyed by the
canonical flow key and always passes the packet. Flows that end on a packet (TCP FIN both ways,
RST, a packet after the idle/active timeout) arrive whole on the ring buffer; flows that just go
quiet are found by the sweep every `xdp.sweep_interval_ms`. Each exported entry is taken out of the
map atomically (lookup-and-delete), so no packet is counted twice or lost between read and delete.

On start a program of ours left attached by a crash is detached first (reconcile with the kernel);
someone else's program is never replaced.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from ml_defender.v1 import flow_pb2

from libs.common.events import community_id
from libs.common.lifecycle import StopFlag
from services.sniffer import libbpf
from services.sniffer.bpf import build
from services.sniffer.errors import SourceError

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
_VALUE_DTYPE = np.dtype(
    {
        "names": ["first_ns", "last_ns", "term_ns", "term_reason", "p0", "p1"],
        "formats": ["<i8", "<i8", "<i8", "<u4", "<u8", "<u8"],
        "offsets": [
            libbpf.FlowValue.first_ns.offset,
            libbpf.FlowValue.last_ns.offset,
            libbpf.FlowValue.term_ns.offset,
            libbpf.FlowValue.term_reason.offset,
            libbpf.FlowValue.dir.offset + libbpf.Dir.packets.offset,
            libbpf.FlowValue.dir.offset + ctypes.sizeof(libbpf.Dir) + libbpf.Dir.packets.offset,
        ],
        "itemsize": ctypes.sizeof(libbpf.FlowValue),
    }
)


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


@dataclass
class XdpCounters:
    """User-space side counts (the kernel's are read from the stats map)."""

    exported: int = 0
    exported_ringbuf: int = 0
    exported_sweep: int = 0
    exported_at_stop: int = 0
    starts: int = 0
    terms: int = 0
    sweeps: int = 0
    sweep_races: int = 0
    map_entries: int = 0
    stale_detached: int = 0
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
        self._obj = libbpf.BpfObject(obj_path, {"mld_flows": self.max_entries})
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
            active_timeout_ns=int(fs.active_timeout_s * 1e9),
            linger_ns=int(fs.tcp_close_linger_s * 1e9),
            start_notices=1,
        )
        self._config.update(ctypes.c_uint32(0), cfg)
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

    def _record(self, key: libbpf.FlowKey, value: libbpf.FlowValue, reason: int) -> None:
        # CLOCK_MONOTONIC (bpf_ktime_get_ns) -> wall clock, read fresh so clock steps are followed
        offset = time.time_ns() - time.monotonic_ns()
        rec = record_from_counters(
            counters_from_kernel(key, value),
            end_reason=reason,
            clock_offset_ns=offset,
            node_id=self.settings.node_id,
            interface=self.interface,
        )
        self._pending.append(rec)
        name = flow_pb2.EndReason.Name(reason)[len("END_REASON_") :].lower()
        self.counts.by_reason[name] = self.counts.by_reason.get(name, 0) + 1

    def _on_event(self, data: bytes) -> None:
        ev = libbpf.FlowEvent.from_buffer_copy(data[: ctypes.sizeof(libbpf.FlowEvent)])
        if ev.kind == libbpf.EVENT_START:
            self.counts.starts += 1
        elif ev.kind == libbpf.EVENT_TERM:
            self.counts.terms += 1
        elif ev.kind == libbpf.EVENT_END:
            self._record(ev.key, ev.c, _REASONS.get(int(ev.reason), flow_pb2.END_REASON_UNSPECIFIED))
            self.counts.exported_ringbuf += 1

    def _due(self, value: Any, now: int) -> int:
        """End reason of an entry at monotonic time `now` (flows.py's expire rules), or 0."""
        fs = self.settings.flows
        if int(value.dir[0].packets) + int(value.dir[1].packets) == 0:
            return 0
        if now - int(value.last_ns) > int(fs.idle_timeout_s * 1e9):
            return int(flow_pb2.END_REASON_IDLE)
        if value.term_ns and now > int(value.term_ns) + int(fs.tcp_close_linger_s * 1e9):
            return int(_REASONS.get(int(value.term_reason), flow_pb2.END_REASON_FIN))
        if now - int(value.first_ns) > int(fs.active_timeout_s * 1e9):
            return int(flow_pb2.END_REASON_ACTIVE)
        return 0

    def sweep(self, now_mono_ns: int | None = None, everything: bool = False) -> int:
        """Export flows that are due (or all when `everything`), taking their entries out of the map."""
        now = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
        fs = self.settings.flows
        keys, vals, n = self._flows.items_batch()
        self.counts.sweeps += 1
        if n == 0:
            self.counts.map_entries = 0
            return 0
        arr = np.frombuffer(memoryview(vals), dtype=_VALUE_DTYPE, count=n)
        if everything:
            take = np.ones(n, dtype=bool)
        else:
            has = (arr["p0"] + arr["p1"]) > 0
            idle = now - arr["last_ns"] > int(fs.idle_timeout_s * 1e9)
            term = (arr["term_ns"] > 0) & (now > arr["term_ns"] + int(fs.tcp_close_linger_s * 1e9))
            active = now - arr["first_ns"] > int(fs.active_timeout_s * 1e9)
            take = has & (idle | term | active)
        taken = 0
        for i in np.flatnonzero(take).tolist():
            key = keys[i]
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
                    reason = flow_pb2.END_REASON_WINDOW
            if not reason:
                if int(value.dir[0].packets) + int(value.dir[1].packets) == 0:
                    continue
                # end of capture: WINDOW, or FIN/RST when the flow had closed (as FlowTable.flush)
                reason = _REASONS.get(int(value.term_reason), 0) if value.term_ns else 0
                reason = reason or flow_pb2.END_REASON_WINDOW
                self.counts.exported_at_stop += 1
            else:
                self.counts.exported_sweep += 1
            self._record(key, value, reason)
            taken += 1
        self.counts.map_entries = max(n - taken, 0)
        return taken

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
        while not stop.is_set():
            wait_ms = max(0, min(100, (next_sweep - time.monotonic_ns()) // 1_000_000))
            rb.poll(int(wait_ms))
            if time.monotonic_ns() >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic_ns() + self.settings.xdp.sweep_interval_ms * 1_000_000
            if self._pending:
                yield self._take_pending()
        yield from self.drain()

    def drain(self) -> Iterator[list[flow_pb2.FlowRecord]]:
        """Stop counting and export everything still in the map (end of capture: WINDOW)."""
        self._detach()
        if self._rb is not None:
            self._rb.consume()
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
        }
        # LRU evictions are silent in the kernel: created = ended + lost + taken + present + evicted.
        gone = k["flows_ended"] + k["ringbuf_full"] + c.exported_sweep + c.exported_at_stop + c.map_entries
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
