"""`mld-detector analyze`: the offline path. The sniffer's extractor and fast detector, then the same
Detector the service runs, in one process; flows read before a damaged spot are still scored."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from libs.common.errors import InputError
from libs.common.events import enum_name, event_to_dict, ip_text
from ml_defender.v1 import detection_pb2, flow_pb2
from services.ml_detector.config import DetectorSettings
from services.ml_detector.detector import Detector
from services.ml_detector.models import load_model_set

if TYPE_CHECKING:
    from services.sniffer.config import SnifferSettings


@dataclass
class AnalyzeSummary:
    flows: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    dropped_sources: set[str] = field(default_factory=set)
    error: InputError | None = None

    def line(self) -> str:
        dec = ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none"
        srcs = ", ".join(sorted(self.dropped_sources)[:10]) or "none"
        more = f" (+{len(self.dropped_sources) - 10} more)" if len(self.dropped_sources) > 10 else ""
        return f"{self.flows} flows; decisions: {dec}; sources dropped: {srcs}{more}"


def analyze(
    paths: Sequence[Path], settings: DetectorSettings, emit: Callable[[detection_pb2.DetectionEvent], None]
) -> AnalyzeSummary:
    """Score every flow of the captures (in order) and hand each event to `emit`."""
    from services.sniffer.config import SnifferSettings
    from services.sniffer.flows import extract_flows

    # offline there is no latency budget: explain every kept event (the service caps it per batch)
    explain = settings.explain.model_copy(update={"max_per_batch": settings.batch.max_flows})
    settings = settings.model_copy(update={"explain": explain})
    detector = Detector(settings, load_model_set(settings))  # models first: a bad model fails fast
    sniffer = SnifferSettings()
    ex = extract_flows(list(paths), sniffer)
    records = list(ex.records)
    fast = fast_results(records, sniffer)
    summary = AnalyzeSummary(error=ex.error)
    step = settings.batch.max_flows
    for i in range(0, len(records), step):
        result = detector.score(records[i : i + step], fast[i : i + step])
        for ev in result.events:
            summary.flows += 1
            decision = enum_name(detection_pb2.Decision, ev.decision)
            summary.decisions[decision] += 1
            if ev.decision == detection_pb2.DECISION_DROP:
                summary.dropped_sources.add(ip_text(ev.flow.key.src_addr))
            emit(ev)
    return summary


def fast_results(records: list[flow_pb2.FlowRecord], sniffer: SnifferSettings) -> list[flow_pb2.FastResult]:
    """The sniffer's fast detector over the records, as the live sniffer runs it."""
    from services.sniffer.fast_detector import FastDetector

    return list(FastDetector(sniffer.fast_detector).observe(records))


def jsonl(ev: detection_pb2.DetectionEvent) -> str:
    return json.dumps(event_to_dict(ev), separators=(",", ":"))


def text_line(ev: detection_pb2.DetectionEvent) -> str:
    d = event_to_dict(ev)
    return (
        f"{d['decision']:<5} {d['final_score']:.3f} {d['src_ip']}:{d['src_port']} -> {d['dst_ip']}:{d['dst_port']}"
        f" {d['protocol']} {d['classification'].lower()} {d['attack_type'] or '-'}"
    )
