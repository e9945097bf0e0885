"""Settings of the sniffer: one immutable pydantic object that `app.py` can swap atomically.

Validated before anything is opened (two-phase configuration). HOT_FIELDS lists the field paths a
live reload may change without a restart; everything else (capture.*, output.*, xdp.*,
flows.max_flows) needs a restart because it shapes sockets, maps or table memory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.common.settings import MetricsSettings, ServiceSettings
from libs.common.zmqio import SocketSettings
from ml_defender.v1 import flow_pb2

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class CaptureSettings(BaseModel):
    """Where packets come from; restart-required."""

    model_config = _FROZEN

    source: Literal["pcap", "afpacket", "xdp"] = "pcap"
    pcap_paths: list[str] = Field(default_factory=list, description="pcap/pcapng files read in order")
    pace: Literal["fast", "realtime"] = Field(
        "fast", description="realtime replays at the capture's own timing"
    )
    speed: float = Field(1.0, gt=0, le=1000, description="realtime pace multiplier (2.0 = twice as fast)")
    loop: bool = Field(False, description="start the pcap list again when done (time keeps moving forward)")
    rebase_time: bool = Field(False, description="shift packet times so a replay starts now (lab replays)")
    interface: str = Field("eth0", min_length=1, description="interface for afpacket/xdp")
    chunk_packets: int = Field(65_536, ge=1, le=10_000_000, description="packets decoded per vectorised step")
    snaplen: int = Field(2048, ge=64, le=262_144, description="bytes kept per frame by live sources")
    afpacket_block_kib: int = Field(
        1024, ge=4, le=65_536, description="afpacket TPACKET_V3 ring block size (KiB, a power of two)"
    )
    afpacket_blocks: int = Field(64, ge=2, le=4096, description="afpacket ring blocks")
    afpacket_block_timeout_ms: int = Field(
        50, ge=1, le=10_000, description="a partly filled afpacket block is handed over after this"
    )

    @model_validator(mode="after")
    def _pow2(self) -> CaptureSettings:
        if self.afpacket_block_kib & (self.afpacket_block_kib - 1):
            raise ValueError(
                f"capture.afpacket_block_kib must be a power of two, got {self.afpacket_block_kib}"
            )
        return self


class FlowSettings(BaseModel):
    """Flow table limits and timeouts (NFStream's defaults)."""

    model_config = _FROZEN

    idle_timeout_s: float = Field(120.0, gt=0, le=86_400)
    active_timeout_s: float = Field(1800.0, gt=0, le=604_800)
    max_flows: int = Field(
        1_000_000, ge=16, description="table bound; the oldest flows are EVICTED when full"
    )
    tcp_close_linger_s: float = Field(
        2.0,
        ge=0,
        le=300,
        description="after FIN both ways or RST, stray packets within this time stay in the flow",
    )
    half_open_timeout_s: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description=(
            "a flow whose responder has sent nothing is exported (IDLE) after this long without a"
            " packet, so unanswered probes are scored quickly; 0 = off (NFStream behaviour). Keep it"
            " above the worst round-trip time, or slow answers split from their request"
        ),
    )
    export_active_interval_s: float = Field(
        0.0,
        ge=0,
        le=604_800,
        description=(
            "a flow older than this is cut with a WINDOW record (a shorter active timeout) so long"
            " floods are scored while they last; 0 = off"
        ),
    )
    tombstone_ttl_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description=(
            "after a flow closed by FIN/RST has left, a few packets of the same connection without a"
            " SYN starting within this time (the ACK that ends a FIN exchange, a retransmitted FIN or"
            " RST) are absorbed and counted (mld_sniffer_late_packets_absorbed_total) instead of"
            " becoming a new flow; 0 = off. Meant for tcp_close_linger_s 0"
        ),
    )
    tombstone_max_keys: int = Field(
        65_536, ge=16, le=10_000_000, description="bound of the recently closed keys kept for tombstone_ttl_s"
    )
    export_batch_size: int = Field(512, ge=1, le=100_000, description="flows per FlowBatch message")
    export_interval_ms: int = Field(
        200, ge=1, le=60_000, description="max wait before a partial batch is sent"
    )

    def active_split_ns(self) -> int:
        """Age after which a flow is cut: the active timeout, or the shorter export window."""
        active = int(self.active_timeout_s * 1e9)
        window = int(self.export_active_interval_s * 1e9)
        return min(active, window) if window > 0 else active

    def active_reason(self) -> int:
        """End reason of a flow cut by age: WINDOW when the export window is the shorter limit."""
        window = int(self.export_active_interval_s * 1e9)
        if 0 < window < int(self.active_timeout_s * 1e9):
            return int(flow_pb2.END_REASON_WINDOW)
        return int(flow_pb2.END_REASON_ACTIVE)


class FastDetectorSettings(BaseModel):
    """Per-source heuristics over a sliding window (DESIGN.md section 3); every number hot-reloadable.

    Counts are of connection attempts that were unanswered or rejected (no reply, or only an RST
    back): answered connections, however many, are normal browsing.
    """

    model_config = _FROZEN

    enabled: bool = True
    window_s: float = Field(10.0, gt=0, le=3600)
    score: float = Field(0.75, ge=0, le=1, description="score of a flow whose source fired any rule")
    max_sources: int = Field(65_536, ge=1, description="LRU bound of per-source state")
    max_events_per_source: int = Field(4096, ge=16, description="bound of remembered attempts per source")
    distinct_destinations_threshold: int = Field(10, ge=1, description="failed attempts to > N hosts")
    smb_connections_threshold: int = Field(3, ge=1, description="failed SMB attempts > N")
    smb_ports: tuple[int, ...] = (445, 139)
    distinct_ports_threshold: int = Field(10, ge=1, description="failed attempts to > N ports")
    rst_ratio_threshold: float = Field(0.2, ge=0, le=1, description="rejected (RST back) / TCP attempts")
    rst_ratio_min_connections: int = Field(
        10, ge=1, description="TCP attempts needed before the ratio counts"
    )
    syn_flood_half_open_ratio: float = Field(
        0.8, ge=0, le=1, description="half-open / TCP attempts to one host"
    )
    syn_flood_min_half_open: int = Field(100, ge=1, description="half-open attempts to one host needed")
    icmp_sweep_threshold: int = Field(10, ge=1, description="echo requests to > N hosts")


class XdpSettings(BaseModel):
    """XDP capture (the XDP engineer owns the program; fields may grow)."""

    model_config = _FROZEN

    mode: Literal["generic", "native"] = "generic"
    map_max_entries: int = Field(262_144, ge=1024)
    sweep_interval_ms: int = Field(500, ge=10, le=60_000)
    ringbuf_kib: int = Field(
        4096, ge=4, le=1 << 20, description="ring buffer for flow notices (KiB, a power of two)"
    )

    @model_validator(mode="after")
    def _pow2(self) -> XdpSettings:
        if self.ringbuf_kib & (self.ringbuf_kib - 1):
            raise ValueError(f"xdp.ringbuf_kib must be a power of two, got {self.ringbuf_kib}")
        return self


def _default_output() -> SocketSettings:
    return SocketSettings(endpoint="tcp://127.0.0.1:5571", bind=True)


class SnifferSettings(ServiceSettings):
    """Everything the sniffer reads; defaults are the lab's."""

    model_config = _FROZEN

    metrics: MetricsSettings = MetricsSettings(port=9101)
    capture: CaptureSettings = CaptureSettings()
    flows: FlowSettings = FlowSettings()
    fast_detector: FastDetectorSettings = FastDetectorSettings()
    xdp: XdpSettings = XdpSettings()
    output: SocketSettings = Field(default_factory=_default_output)

    @model_validator(mode="after")
    def _check(self) -> SnifferSettings:
        if self.flows.active_timeout_s < self.flows.idle_timeout_s:
            raise ValueError("flows.active_timeout_s must be >= flows.idle_timeout_s")
        return self


HOT_FIELDS: tuple[str, ...] = (
    "log_level",
    "fast_detector.*",
    "flows.idle_timeout_s",
    "flows.active_timeout_s",
    "flows.tcp_close_linger_s",
    "flows.half_open_timeout_s",
    "flows.export_active_interval_s",
    "flows.tombstone_ttl_s",
    "flows.tombstone_max_keys",
    "flows.export_batch_size",
    "flows.export_interval_ms",
)
"""Field paths a live reload may change in place; any other change needs a restart."""

RESTART_FIELDS: tuple[str, ...] = (
    "node_id",
    "metrics.*",
    "capture.*",
    "output.*",
    "xdp.*",
    "flows.max_flows",
)


def is_hot(path: str) -> bool:
    """True when a changed field `path` (dotted) can be applied without a restart."""
    for pattern in HOT_FIELDS:
        if pattern.endswith(".*") and (path == pattern[:-2] or path.startswith(pattern[:-1])):
            return True
        if path == pattern:
            return True
    return False
