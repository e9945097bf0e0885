"""Every metric of the sniffer, in one place (`mld_sniffer_<thing>_<unit>`, `_total` for counters).

Created once per process (tests run several apps in one interpreter); the app feeds them from the
source's cumulative `stats()` by deltas, so a source never needs to know about Prometheus.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

_lock = threading.Lock()


@dataclass(frozen=True)
class SnifferMetrics:
    packets: Counter
    bytes: Counter
    malformed: Counter
    flows_exported: Counter
    evictions: Counter
    fast_rules_fired: Counter
    flows_scored: Counter
    batches_sent: Counter
    batches_dropped: Counter
    capture_file_errors: Counter
    table_flows: Gauge
    fast_sources: Gauge
    xdp_map_entries: Gauge
    xdp_map_capacity: Gauge
    xdp_map_fill: Gauge
    xdp_ringbuf_full: Counter
    xdp_lost_packets: Counter
    xdp_notices_lost: Counter
    late_packets_absorbed: Counter


_metrics: SnifferMetrics | None = None


def sniffer_metrics() -> SnifferMetrics:
    """The sniffer's metrics, registered on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = SnifferMetrics(
                packets=Counter("mld_sniffer_packets", "Frames taken in (usable or not)"),
                bytes=Counter("mld_sniffer_bytes", "Captured bytes taken in"),
                malformed=Counter(
                    "mld_sniffer_malformed_packets",
                    "Frames skipped, by reason (non_ip is expected traffic)",
                    ["reason"],
                ),
                flows_exported=Counter("mld_sniffer_flows_exported", "Flow records exported", ["end_reason"]),
                evictions=Counter(
                    "mld_sniffer_flow_table_evictions", "Flows evicted because the table was full"
                ),
                fast_rules_fired=Counter(
                    "mld_sniffer_fast_rules_fired", "Flows scored by a fast-detector rule, by rule", ["rule"]
                ),
                flows_scored=Counter("mld_sniffer_flows_scored", "Flows given a non-zero fast score"),
                batches_sent=Counter("mld_sniffer_batches_sent", "FlowBatch messages sent"),
                batches_dropped=Counter(
                    "mld_sniffer_batches_dropped",
                    "FlowBatch messages dropped because the consumer stayed full",
                ),
                capture_file_errors=Counter(
                    "mld_sniffer_capture_file_errors", "Capture files missing, unreadable or damaged"
                ),
                table_flows=Gauge("mld_sniffer_flow_table_flows", "Open flows in the flow table"),
                fast_sources=Gauge(
                    "mld_sniffer_fast_detector_sources", "Sources tracked by the fast detector"
                ),
                xdp_map_entries=Gauge("mld_sniffer_xdp_map_entries", "Entries in the XDP flow map"),
                xdp_map_capacity=Gauge(
                    "mld_sniffer_xdp_map_capacity_entries", "Capacity of the XDP flow map"
                ),
                xdp_map_fill=Gauge(
                    "mld_sniffer_xdp_map_fill_permille", "XDP flow map entries per 1000 of capacity"
                ),
                xdp_ringbuf_full=Counter(
                    "mld_sniffer_xdp_ringbuf_full",
                    "Flows lost because their END notice did not fit the ring buffer (raise xdp.ringbuf_kib)",
                ),
                xdp_lost_packets=Counter(
                    "mld_sniffer_xdp_lost_packets", "Packets of the flows lost to a full ring buffer"
                ),
                xdp_notices_lost=Counter(
                    "mld_sniffer_xdp_notices_lost",
                    "START/TERM notices that did not fit the ring buffer (the sweep catches those flows later)",
                ),
                late_packets_absorbed=Counter(
                    "mld_sniffer_late_packets_absorbed",
                    "Packets of a just-closed TCP connection (last ACK, retransmitted FIN/RST) absorbed by"
                    " its tombstone instead of becoming a new flow (flows.tombstone_ttl_s)",
                ),
            )
        return _metrics
