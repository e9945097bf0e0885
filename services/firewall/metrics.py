"""Every metric of the firewall (`mld_firewall_*`), created once at import.

prometheus-client appends `_total` to counter names on exposition.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000)

BANNED = Gauge(
    "mld_firewall_banned_addresses",
    "Sources banned now, by family and kind (host or cidr)",
    ["family", "kind"],
)
DECISIONS = Counter("mld_firewall_decisions", "Detection events received, by decision", ["decision"])
REQUESTS = Counter(
    "mld_firewall_block_requests",
    "Block requests by outcome (queued, refreshed, deduplicated, covered)",
    ["outcome"],
)
REJECTED = Counter(
    "mld_firewall_rejected_requests",
    "Block requests refused, by reason (allow_listed, invalid, over_capacity)",
    ["reason"],
)
UNBANNED = Counter(
    "mld_firewall_unbanned_addresses",
    "Bans removed, by reason (expired, operator, allow_listed, superseded)",
    ["reason"],
)
BATCHES = Counter("mld_firewall_batches", "Kernel transactions, by result (committed, failed)", ["result"])
BATCH_SIZE = Histogram(
    "mld_firewall_batch_size_ops", "Operations per kernel transaction", buckets=SIZE_BUCKETS
)
FAILED_OPS = Counter(
    "mld_firewall_failed_operations", "Operations the kernel refused even when retried alone", ["op"]
)
COMMIT_SECONDS = Histogram(
    "mld_firewall_commit_duration_seconds", "Time of one kernel transaction", buckets=LATENCY_BUCKETS
)
BLOCK_LATENCY = Histogram(
    "mld_firewall_block_latency_seconds",
    "From the event's capture timestamp to the kernel commit of its ban",
    buckets=LATENCY_BUCKETS,
)
REQUEST_LATENCY = Histogram(
    "mld_firewall_request_to_commit_seconds",
    "From the firewall receiving a block request to its kernel commit",
    buckets=LATENCY_BUCKETS,
)
RECONCILED = Gauge("mld_firewall_reconciled_elements", "Elements read from the kernel at the last reconcile")
PENDING = Gauge("mld_firewall_pending_operations", "Operations waiting for the next transaction")
