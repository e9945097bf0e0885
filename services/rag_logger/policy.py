"""The keep policy: which DetectionEvents are worth an artifact (DESIGN.md section 3)."""

from __future__ import annotations

from ml_defender.v1 import detection_pb2
from services.rag_logger.config import KeepPolicy


def keep_reason(ev: detection_pb2.DetectionEvent, policy: KeepPolicy) -> str | None:
    """The first rule that keeps `ev` (rag_required, final, divergence, all), or None to skip it.

    NaN scores compare false, so they never keep an event by themselves.
    """
    if policy.keep_all:
        return "all"
    if policy.rag_required and ev.rag_required:
        return "rag_required"
    if ev.final_score >= policy.final_min:
        return "final"
    if ev.divergence >= policy.divergence_min:
        return "divergence"
    return None
