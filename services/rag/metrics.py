"""Every metric of the rag service (`mld_rag_*`), created once per process."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

_lock = threading.Lock()


@dataclass(frozen=True)
class RagMetrics:
    events_ingested: Counter
    pairs_damaged: Counter
    duplicates: Counter
    index_events: Gauge
    index_texts: Gauge
    query_seconds: Histogram
    queries: Counter
    ingest_lag_seconds: Histogram
    ingest_pass_seconds: Histogram
    index_saves: Counter
    index_rebuilds: Counter
    tuning_changes: Counter


_metrics: RagMetrics | None = None


def rag_metrics() -> RagMetrics:
    """The service's metrics (one set per process, so tests can build several services)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = RagMetrics(
                events_ingested=Counter("mld_rag_events_ingested", "Artifact pairs added to the index"),
                pairs_damaged=Counter(
                    "mld_rag_pairs_damaged", "Artifact pairs skipped as damaged", ["reason"]
                ),
                duplicates=Counter("mld_rag_duplicate_events", "Pairs whose event id the index already held"),
                index_events=Gauge("mld_rag_index_events", "Events in the index"),
                index_texts=Gauge("mld_rag_index_distinct_texts", "Distinct event texts embedded"),
                query_seconds=Histogram(
                    "mld_rag_query_seconds",
                    "Time to answer one request, embedding included",
                    ["command"],
                    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
                ),
                queries=Counter("mld_rag_queries", "Requests answered", ["command", "result"]),
                ingest_lag_seconds=Histogram(
                    "mld_rag_ingest_lag_seconds",
                    "From the event being logged to it being searchable",
                    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 30.0, 300.0),
                ),
                ingest_pass_seconds=Histogram(
                    "mld_rag_ingest_pass_seconds", "Duration of one ingest pass that added events"
                ),
                index_saves=Counter("mld_rag_index_saves", "FAISS snapshots written"),
                index_rebuilds=Counter(
                    "mld_rag_index_rebuilds", "Index rebuilds from the artifacts", ["reason"]
                ),
                tuning_changes=Counter(
                    "mld_rag_tuning_changes", "Tuning commands applied to etcd", ["command", "result"]
                ),
            )
        return _metrics


def damage_reason(text: str) -> str:
    """A small, fixed label set for the damaged-pairs counter."""
    for key in (
        "JSON",
        "decode",
        "ids disagree",
        "lacks",
        "final_score",
        "timestamp",
        "unreadable",
        "no event_id",
    ):
        if key in text:
            return key.lower().replace(" ", "_")
    return "other"
