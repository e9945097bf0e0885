"""The detector core: records (+ fast results) in, DetectionEvents out. No sockets, no clock but
`time.time_ns` for the `scored` stage stamp, so `analyze`, the service and the tests share it.

Settings and models live in one immutable `State` that `swap` replaces whole: a reload never leaves
half-new thresholds with old models, and a batch in flight finishes with the state it started with.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from libs.common.events import FEATURE_NAMES, uuid7
from ml_defender.v1 import detection_pb2, flow_pb2
from services.ml_detector.config import DetectorSettings
from services.ml_detector.context import ContextTracker
from services.ml_detector.models import MODEL_FEATURES, ModelSet
from services.ml_detector.scoring import Scores, score, thresholds_proto

_N_BASE = len(FEATURE_NAMES)


_GET_FEATURES = operator.attrgetter(*FEATURE_NAMES)


def base_matrix(records: Sequence[flow_pb2.FlowRecord]) -> np.ndarray:
    """The 53 flow features of each record, in proto order, as float64."""
    if not records:
        return np.zeros((0, _N_BASE), dtype=np.float64)
    return np.array([_GET_FEATURES(rec.features) for rec in records], dtype=np.float64)


def feature_matrix(records: Sequence[flow_pb2.FlowRecord], tracker: ContextTracker) -> np.ndarray:
    """Model input: flow features then per-source context features (updates the tracker)."""
    return np.hstack([base_matrix(records), tracker.features(records)])


@dataclass(frozen=True)
class State:
    settings: DetectorSettings
    models: ModelSet
    revision: int = 0


@dataclass(frozen=True)
class BatchResult:
    events: list[detection_pb2.DetectionEvent]
    scores: Scores
    ml_by_model: dict[str, np.ndarray]
    unexplained: int = 0  # kept events left without an explanation (over explain.max_per_batch)
    deferred: tuple[State, np.ndarray] | None = None  # scored with explain=False: what explain() needs


class Detector:
    """Scores batches; thread-safe swap of settings+models (scoring itself runs in one thread)."""

    def __init__(self, settings: DetectorSettings, models: ModelSet, revision: int = 0) -> None:
        self._state = State(settings, models, revision)
        self._lock = threading.Lock()
        c = settings.context
        self.tracker = ContextTracker(c.window_s, c.max_sources, c.max_flows_per_source)

    @property
    def state(self) -> State:
        return self._state

    def swap(self, settings: DetectorSettings, models: ModelSet, revision: int) -> None:
        """Replace settings and models atomically (validated and loaded by the caller)."""
        with self._lock:
            self._state = State(settings, models, revision)
            self.tracker.set_window(settings.context.window_s)

    def score(
        self,
        records: Sequence[flow_pb2.FlowRecord],
        fast: Sequence[flow_pb2.FastResult] | None = None,
        explain: bool = True,
    ) -> BatchResult:
        """Events for `records`; with explain=False the TreeSHAP step is left to `explain(result)`,
        so a caller can send decisions first (a block must not wait for explanations)."""
        st = self._state
        n = len(records)
        if n == 0:
            return BatchResult([], score(np.zeros(0), {}, [], st.settings.thresholds), {})
        x = feature_matrix(records, self.tracker)
        ml_by_model = st.models.predict(x)
        fast_scores = np.zeros(n)
        rules: list[list[str]] = [[] for _ in range(n)]
        if fast is not None:
            for i, fr in enumerate(fast[:n]):
                fast_scores[i] = fr.score
                rules[i] = list(fr.rules)
        th = st.settings.thresholds
        s = score(fast_scores, ml_by_model, rules, th)
        contribs = self._explain(st, x, s, ml_by_model) if explain else {}
        scored_ns = time.time_ns()
        # fields shared by the whole batch are set once on a template and copied (C-level CopyFrom)
        template = detection_pb2.DetectionEvent(config_revision=st.revision, node_id=st.settings.node_id)
        template.model_versions.update(st.models.versions)
        template.thresholds.CopyFrom(thresholds_proto(th))
        template.timestamps.scored_ns = scored_ns
        cols = {k: v.tolist() for k, v in ml_by_model.items()}
        fast_l, ml_l, final_l, div_l = (
            fast_scores.tolist(),
            s.ml.tolist(),
            s.final.tolist(),
            s.divergence.tolist(),
        )
        cls_l, ver_l, dec_l = s.classification.tolist(), s.verdict.tolist(), s.decision.tolist()
        rag_l = s.rag_required.tolist()
        events = []
        for i, rec in enumerate(records):
            ev = detection_pb2.DetectionEvent()
            ev.CopyFrom(template)
            ev.event_id = uuid7(scored_ns)
            ev.fast_score = fast_l[i]
            ev.ml_score = ml_l[i]
            ev.final_score = final_l[i]
            ev.divergence = div_l[i]
            ev.classification = cls_l[i]
            ev.verdict = ver_l[i]
            ev.decision = dec_l[i]
            ev.attack_type = s.winner[i]
            ev.rag_required = rag_l[i]
            ev.flow.CopyFrom(rec)
            if rules[i]:
                ev.rules.extend(rules[i])
            scores = ev.ml_scores
            for k, col in cols.items():
                scores[k] = col[i]
            ts = ev.timestamps
            ts.captured_ns = rec.captured_ns
            ts.exported_ns = rec.exported_ns
            if i in contribs:
                ev.explanation.extend(contribs[i])
            events.append(ev)
        if not explain:
            return BatchResult(events, s, ml_by_model, 0, (st, x))
        return BatchResult(events, s, ml_by_model, _unexplained(st, s, contribs))

    def explain(self, result: BatchResult) -> int:
        """Add the explanations of a batch scored with explain=False to its events (in place);
        returns how many kept events stay unexplained (over explain.max_per_batch)."""
        if result.deferred is None:
            return result.unexplained
        st, x = result.deferred
        contribs = self._explain(st, x, result.scores, result.ml_by_model)
        for i, rows in contribs.items():
            result.events[i].explanation.extend(rows)
        return _unexplained(st, result.scores, contribs)

    @staticmethod
    def _explain(
        st: State, x: np.ndarray, s: Scores, ml_by_model: dict[str, np.ndarray]
    ) -> dict[int, list[detection_pb2.FeatureContribution]]:
        """Top-k pred_contrib of the top-scoring model, for kept events only."""
        k = st.settings.explain.top_k
        rows = np.flatnonzero(s.kept)
        if k == 0 or len(rows) == 0 or not ml_by_model:
            return {}
        budget = st.settings.explain.max_per_batch
        if len(rows) > budget:  # strongest first; the rest are counted by the caller
            rows = np.sort(rows[np.argsort(-s.final[rows], kind="stable")[:budget]])
        names = list(ml_by_model)
        stack = np.vstack([ml_by_model[m] for m in names])
        out: dict[int, list[detection_pb2.FeatureContribution]] = {}
        for m_idx, m_name in enumerate(names):
            mine = rows[stack[:, rows].argmax(axis=0) == m_idx]
            if len(mine) == 0:
                continue
            contrib = st.models.models[m_name].contributions(x[mine])[:, :-1]
            for r, row in zip(mine, contrib, strict=True):
                top = np.argsort(-np.abs(row), kind="stable")[:k]
                out[int(r)] = [
                    detection_pb2.FeatureContribution(
                        feature=MODEL_FEATURES[j],
                        value=float(x[r, j]),
                        contribution=float(row[j]),
                        model=m_name,
                    )
                    for j in top
                ]
        return out


def _unexplained(st: State, s: Scores, contribs: dict[int, list[detection_pb2.FeatureContribution]]) -> int:
    """Kept events left without an explanation (0 when explanations are off)."""
    return max(int(s.kept.sum()) - len(contribs), 0) if st.settings.explain.top_k else 0
