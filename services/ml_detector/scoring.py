"""Scoring of DESIGN.md section 3 as pure functions over arrays: "maximum threat wins".

Definitions (all thresholds from `ThresholdSettings`, hot-reloadable):
- ml = max over enabled models; final = max(fast, ml); divergence = |fast - ml|.
- fast fired: fast >= fast_fired (the fast detector gives 0.75 when a rule fires, 0 otherwise).
- classification, first match wins:
  DIVERGENCE  divergence > divergence threshold (the two detectors disagree strongly);
  CONSENSUS   fast fired and ml > consensus_ml;
  FAST_ONLY   fast fired (ml did not confirm, but not far enough apart to diverge);
  ML_ONLY     ml >= ml_fired and the fast detector did not fire;
  BENIGN      otherwise.
- verdict / decision: final >= drop -> MALICIOUS / DROP; final >= alert -> SUSPICIOUS / ALERT;
  else BENIGN / ALLOW.
- rag_required: divergence > divergence threshold or final >= rag_final.
- kept (explained, stored by the rag-logger): rag_required or final >= drop or divergence >= threshold.
- attack_type: when final >= alert, the first fast rule if the fast score won (ties go to the
  fast detector, whose rules name the behaviour), else the name of the model with the top score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml_defender.v1 import detection_pb2
from services.ml_detector.config import ThresholdSettings

C = detection_pb2


@dataclass(frozen=True)
class Scores:
    """Per-flow results of one batch (parallel arrays)."""

    ml: np.ndarray
    final: np.ndarray
    divergence: np.ndarray
    classification: np.ndarray
    verdict: np.ndarray
    decision: np.ndarray
    rag_required: np.ndarray
    kept: np.ndarray
    winner: list[str]  # attack_type per flow ("" when below the alert band)


def score(
    fast: np.ndarray,
    ml_by_model: dict[str, np.ndarray],
    rules: Sequence[Sequence[str]],
    th: ThresholdSettings,
) -> Scores:
    """Combine fast and per-model ML scores for a batch of n flows."""
    n = len(fast)
    names = list(ml_by_model)
    if names:
        stack = np.vstack([ml_by_model[k] for k in names])
        ml = stack.max(axis=0)
        top = stack.argmax(axis=0)
    else:
        ml = np.zeros(n)
        top = np.zeros(n, dtype=np.int64)
    final = np.maximum(fast, ml)
    divergence = np.abs(fast - ml)
    fast_fired = fast >= th.fast_fired
    cls = np.full(n, C.CLASSIFICATION_BENIGN, dtype=np.int32)
    cls[ml >= th.ml_fired] = C.CLASSIFICATION_ML_ONLY
    cls[fast_fired] = C.CLASSIFICATION_FAST_ONLY
    cls[fast_fired & (ml > th.consensus_ml)] = C.CLASSIFICATION_CONSENSUS
    cls[divergence > th.divergence] = C.CLASSIFICATION_DIVERGENCE
    drop = final >= th.drop
    alert = (final >= th.alert) & ~drop
    verdict = np.full(n, C.VERDICT_BENIGN, dtype=np.int32)
    verdict[alert] = C.VERDICT_SUSPICIOUS
    verdict[drop] = C.VERDICT_MALICIOUS
    decision = np.full(n, C.DECISION_ALLOW, dtype=np.int32)
    decision[alert] = C.DECISION_ALERT
    decision[drop] = C.DECISION_DROP
    rag = (divergence > th.divergence) | (final >= th.rag_final)
    kept = rag | drop | (divergence >= th.divergence)
    winner = []
    for i in range(n):
        if final[i] < th.alert:
            winner.append("")
        elif fast[i] >= ml[i] and rules[i]:
            winner.append(str(rules[i][0]))
        else:
            winner.append(names[int(top[i])] if names else "")
    return Scores(ml, final, divergence, cls, verdict, decision, rag, kept, winner)


def thresholds_proto(th: ThresholdSettings) -> detection_pb2.Thresholds:
    return detection_pb2.Thresholds(
        drop=th.drop,
        alert=th.alert,
        divergence=th.divergence,
        rag_final=th.rag_final,
        consensus_ml=th.consensus_ml,
    )
