"""Every metric of the ml-detector (`mld_ml_detector_*`), created once per process."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from libs.common.events import enum_name
from libs.watcher.metrics import config_metrics
from ml_defender.v1 import detection_pb2
from services.ml_detector.scoring import Scores

SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
_lock = threading.Lock()
_metrics: list[DetectorMetrics] = []


@dataclass(frozen=True)
class DetectorMetrics:
    flows: Counter
    batches: Counter
    events: Counter
    kept: Counter
    unexplained: Counter
    batch_latency: Histogram
    pipeline_latency: Histogram
    model_score: Counter
    reloads: Counter
    model_info: Gauge
    revision: Gauge
    context_sources: Gauge
    sequence_gaps: Counter
    unrouted: Counter

    def observe(self, s: Scores, ml_by_model: dict[str, np.ndarray], seconds: float) -> None:
        """Count one scored batch; score histograms are filled in bulk (numpy), not per flow."""
        n = len(s.final)
        self.flows.inc(n)
        self.batches.inc()
        self.batch_latency.observe(seconds)
        pairs, counts = np.unique(np.stack([s.decision, s.classification]), axis=1, return_counts=True)
        for (dec, cls), c in zip(pairs.T, counts, strict=True):
            self.events.labels(
                enum_name(detection_pb2.Decision, int(dec)), enum_name(detection_pb2.Classification, int(cls))
            ).inc(int(c))
        self.kept.inc(int(s.kept.sum()))
        edges = np.array((0.0, *SCORE_BUCKETS))
        for model, scores in ml_by_model.items():
            hist, _ = np.histogram(scores, bins=edges)
            for upper, c in zip(SCORE_BUCKETS, hist, strict=True):
                if c:
                    self.model_score.labels(model, f"{upper:g}").inc(int(c))


def detector_metrics() -> DetectorMetrics:
    """The detector's metrics, registered on first use (tests may build several apps)."""
    with _lock:
        if not _metrics:
            _metrics.append(
                DetectorMetrics(
                    flows=Counter("mld_ml_detector_flows_scored", "Flows scored"),
                    batches=Counter("mld_ml_detector_batches_scored", "Batches scored (one model call each)"),
                    events=Counter(
                        "mld_ml_detector_events",
                        "Events sent, by decision and classification",
                        ["decision", "classification"],
                    ),
                    kept=Counter(
                        "mld_ml_detector_kept_events", "Events the rag-logger will keep (explained)"
                    ),
                    unexplained=Counter(
                        "mld_ml_detector_unexplained_events",
                        "Kept events sent without an explanation (over explain.max_per_batch)",
                    ),
                    batch_latency=Histogram(
                        "mld_ml_detector_batch_latency_seconds",
                        "Time to score one batch (features, models, events)",
                        buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
                    ),
                    pipeline_latency=Histogram(
                        "mld_ml_detector_capture_to_score_seconds",
                        "Wall time from a flow's capture to its score",
                        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0),
                    ),
                    model_score=Counter(
                        "mld_ml_detector_model_score_flows",
                        "Flows by model and score bucket (upper bound; a histogram filled in bulk)",
                        ["model", "le"],
                    ),
                    reloads=Counter(
                        "mld_ml_detector_model_reloads", "Model/settings reloads by result", ["result"]
                    ),
                    model_info=Gauge(
                        "mld_ml_detector_model_info",
                        "Loaded models (1 = in use)",
                        ["model", "version", "engine"],
                    ),
                    revision=config_metrics("ml-detector").revision,  # one series, shared with libs/watcher
                    context_sources=Gauge(
                        "mld_ml_detector_context_sources", "Sources tracked for context features"
                    ),
                    sequence_gaps=Counter(
                        "mld_ml_detector_batch_sequence_gaps",
                        "FlowBatch messages missing (sequence jumps)",
                        ["node"],
                    ),
                    unrouted=Counter(
                        "mld_ml_detector_unrouted_events",
                        "Events whose origin node has no entry in firewall_nodes (sent to every firewall)",
                        ["node"],
                    ),
                )
            )
        return _metrics[0]
