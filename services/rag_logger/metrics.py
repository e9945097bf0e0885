"""Every metric of the rag-logger (exposed names get `_total` on counters).

mld_rag_logger_events_received_total{type}     messages taken from the socket (detection, config)
mld_rag_logger_events_kept_total{reason}       events the keep policy accepted (rag_required, final, divergence, all)
mld_rag_logger_events_not_kept_total           events below the keep policy (normal, not an error)
mld_rag_logger_events_written_total{kind}      records committed durably (event, config)
mld_rag_logger_written_bytes_total             bytes of committed artifacts (.pb + .json)
mld_rag_logger_commit_latency_seconds          one group commit: first temp file to directory fsync
mld_rag_logger_event_latency_seconds           one event: accepted to committed
mld_rag_logger_commit_batch_events             events per group commit
mld_rag_logger_queue_depth_events              events waiting for the writer
mld_rag_logger_queue_capacity_events           the bound of that queue
mld_rag_logger_events_dropped_total{reason}    lost on purpose, by reason (queue_full, disk_full, invalid,
                                               duplicate, shutdown)
mld_rag_logger_storage_blocked                 1 while the writer cannot write (any reason)
mld_rag_logger_disk_full                       1 while the artifacts filesystem is full
mld_rag_logger_storage_errors_total{reason}    failed commits (disk_full, read_only, permission, io_error,
                                               writer_process, locked)
mld_rag_logger_disk_free_bytes                 free space seen at the last check
mld_rag_logger_jsonl_errors_total              failed appends to the daily .jsonl (best effort)
mld_rag_logger_rotations_total                 day changes seen by the writer
mld_rag_logger_temp_files_removed_total        leftover temp files removed at start
mld_rag_logger_pairs_repaired_total            half pairs (.pb without .json) completed at start
mld_rag_logger_memory_trims_total              free heap memory handed back after a backlog drained
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

P = "mld_rag_logger_"

RECEIVED = Counter(P + "events_received", "Messages taken from the socket", ["type"])
KEPT = Counter(P + "events_kept", "Events the keep policy accepted, by the first matching rule", ["reason"])
NOT_KEPT = Counter(P + "events_not_kept", "Events below the keep policy")
WRITTEN = Counter(P + "events_written", "Records committed durably", ["kind"])
BYTES = Counter(P + "written_bytes", "Bytes of committed artifacts (.pb + .json)")
COMMIT_LATENCY = Histogram(
    P + "commit_latency_seconds",
    "One group commit, first temp file to directory fsync",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
EVENT_LATENCY = Histogram(
    P + "event_latency_seconds",
    "One event, accepted to committed",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH = Histogram(
    P + "commit_batch_events",
    "Events per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
QUEUE_DEPTH = Gauge(P + "queue_depth_events", "Events waiting for the writer")
QUEUE_CAPACITY = Gauge(P + "queue_capacity_events", "Bound of the writer queue")
DROPPED = Counter(P + "events_dropped", "Events lost on purpose, by reason", ["reason"])
BLOCKED = Gauge(P + "storage_blocked", "1 while the writer cannot write")
DISK_FULL = Gauge(P + "disk_full", "1 while the artifacts filesystem is full")
STORAGE_ERRORS = Counter(P + "storage_errors", "Failed commits by reason", ["reason"])
DISK_FREE = Gauge(P + "disk_free_bytes", "Free space on the artifacts filesystem at the last check")
JSONL_ERRORS = Counter(P + "jsonl_errors", "Failed appends to the daily .jsonl")
ROTATIONS = Counter(P + "rotations", "Day changes seen by the writer")
TEMP_REMOVED = Counter(P + "temp_files_removed", "Leftover temp files removed at start")
PAIRS_REPAIRED = Counter(P + "pairs_repaired", "Half pairs completed at start")
MEMORY_TRIMS = Counter(P + "memory_trims", "Free heap memory handed back after a backlog drained")

# Label children used per event, bound once (a labels() lookup per event costs more than the inc).
RECEIVED_DETECTION = RECEIVED.labels("detection")
RECEIVED_CONFIG = RECEIVED.labels("config")
KEPT_BY_REASON = {r: KEPT.labels(r) for r in ("all", "rag_required", "final", "divergence")}
WRITTEN_EVENT = WRITTEN.labels("event")
WRITTEN_CONFIG = WRITTEN.labels("config")
