"""The `mld-detector run` service: PULL FlowBatch, score, PUSH every DetectionEvent to the firewall
and to the rag-logger (one PUSH socket each, so both get every event).

Two-phase start: settings and models are validated and loaded before any socket opens. Reload
(SIGHUP re-reads --config; `apply()` is the hook for the etcd watcher) loads the new models beside
the running ones and swaps settings+models in one step between batches, or refuses with the reason
and keeps what runs. SIGTERM/SIGINT stop the intake, score what is queued, flush, exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from libs.common.cli import package_version
from libs.common.errors import MLDefenderError
from libs.common.lifecycle import StopFlag
from libs.common.log import setup_logging
from libs.common.metrics import build_info, start_metrics_server
from libs.common.settings import load_settings
from libs.common.workq import WorkReceiver, derive_event_ids, open_receiver
from libs.common.zmqio import Puller, Pusher
from ml_defender.v1 import detection_pb2, flow_pb2
from services.ml_detector.config import RESTART_FIELDS, DetectorSettings
from services.ml_detector.detector import Detector
from services.ml_detector.fanout import targets
from services.ml_detector.metrics import DetectorMetrics, detector_metrics
from services.ml_detector.models import ModelSet, load_model_set

log = logging.getLogger("mld.ml_detector")
SERVICE = "ml_detector"
_RESTART_TOP = (*(p.split(".")[0] for p in RESTART_FIELDS), "engine_cache_dir")


def _restart_only_changes(old: DetectorSettings, new: DetectorSettings) -> list[str]:
    return [f for f in _RESTART_TOP if getattr(old, f) != getattr(new, f)]


class DetectorApp:
    def __init__(
        self, settings: DetectorSettings, config_path: Path | None = None, stop: StopFlag | None = None
    ):
        self.config_path = config_path
        self.stop = stop or StopFlag()
        self.metrics: DetectorMetrics = detector_metrics()
        models = load_model_set(settings)  # fails before any socket is opened
        self.detector = Detector(settings, models)
        self._publish_models(models)
        self.reload_requested = threading.Event()
        self._last_seq: dict[str, int] = {}
        self.firewalls: dict[str, Pusher] = {}  # multi-node: one PUSH per node's firewall

    @property
    def settings(self) -> DetectorSettings:
        return self.detector.state.settings

    def _publish_models(self, models: ModelSet) -> None:
        self.metrics.model_info.clear()
        for name, m in models.models.items():
            self.metrics.model_info.labels(name, m.version, m.engine).set(1)

    def apply(self, new: DetectorSettings, revision: int | None = None) -> bool:
        """Swap in new settings and models, or keep the current ones and say why (False)."""
        old = self.settings
        restart = _restart_only_changes(old, new)
        if restart:
            log.warning(
                "settings changed that need a restart; keeping the running values", extra={"fields": restart}
            )
            new = new.model_copy(update={f: getattr(old, f) for f in restart})
        try:
            models = load_model_set(new, previous=self.detector.state.models)
        except MLDefenderError as err:
            self.metrics.reloads.labels("rejected").inc()
            log.error("new models refused; the current ones stay in use", extra={"error": err.message})
            return False
        rev = self.detector.state.revision if revision is None else revision
        self.detector.swap(new, models, rev)
        self._publish_models(models)
        self.metrics.revision.set(rev)
        self.metrics.reloads.labels("applied").inc()
        log.info(
            "settings and models applied",
            extra={"revision": rev, "models": models.versions, "engine": models.engine},
        )
        return True

    def reload_from_file(self) -> bool:
        try:
            new = load_settings(DetectorSettings, self.config_path) if self.config_path else self.settings
        except MLDefenderError as err:
            self.metrics.reloads.labels("rejected").inc()
            log.error("settings refused; the current ones stay in use", extra={"error": err.message})
            return False
        return self.apply(new)

    def _install_hup(self) -> None:
        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self.reload_requested.set()

        signal.signal(signal.SIGHUP, on_hup)

    def _gaps(self, batch: flow_pb2.FlowBatch) -> None:
        last = self._last_seq.get(batch.node_id)
        if last is not None and batch.sequence > last + 1:
            self.metrics.sequence_gaps.labels(batch.node_id).inc(batch.sequence - last - 1)
        self._last_seq[batch.node_id] = batch.sequence

    def process(
        self, batches: list[flow_pb2.FlowBatch], firewall: list[Pusher], rag_logger: list[Pusher]
    ) -> int:
        """Score the flows of some batches together; every event goes to the firewall(s) before
        any TreeSHAP explanation is computed (a block must not wait for it), then, explained, to
        the rag-logger (both get every event, in the same order)."""
        records: list[flow_pb2.FlowRecord] = []
        fast: list[flow_pb2.FastResult] = []
        for b in batches:
            self._gaps(b)
            records.extend(b.flows)
            fr = list(b.fast)
            if len(fr) < len(b.flows):
                fr.extend(flow_pb2.FastResult() for _ in range(len(b.flows) - len(fr)))
            fast.extend(fr[: len(b.flows)])
        t0 = time.perf_counter()
        result = self.detector.score(records, fast, explain=False)
        derive_event_ids(result.events, batches)  # a redelivered batch gives the same event ids
        for ev in result.events:
            for out in firewall:
                out.send(ev)
            if self.firewalls:
                self._fan_out(ev)
        unexplained = self.detector.explain(result)
        self.metrics.observe(result.scores, result.ml_by_model, time.perf_counter() - t0)
        if unexplained:
            self.metrics.unexplained.inc(unexplained)
        now = time.time_ns()
        for ev in result.events:
            if ev.flow.captured_ns:
                self.metrics.pipeline_latency.observe(max(0, now - ev.flow.captured_ns) / 1e9)
            for out in rag_logger:
                out.send(ev)
        self.metrics.context_sources.set(len(self.detector.tracker))
        return len(records)

    def _fan_out(self, ev: detection_pb2.DetectionEvent) -> None:
        """Send to the firewall of each node that should act (settings.drop_fanout)."""
        nodes, unrouted = targets(
            ev.flow.node_id,
            ev.decision == detection_pb2.DECISION_DROP,
            list(self.firewalls),
            self.settings.drop_fanout,
        )
        if unrouted:
            self.metrics.unrouted.labels(ev.flow.node_id).inc()
        for node in nodes:
            self.firewalls[node].send(ev)

    def run(self) -> int:
        s = self.settings
        setup_logging(SERVICE, s.log_level)
        start_metrics_server(s.metrics.host, s.metrics.port)
        build_info(SERVICE, package_version(), s.node_id)
        puller = open_receiver(
            SERVICE, s.input, {"ml_defender.v1.FlowBatch": flow_pb2.FlowBatch}, name=s.node_id
        )
        rag = [Pusher(SERVICE, s.rag_logger)]
        firewall: list[Pusher] = []
        if s.firewall_nodes:
            self.firewalls = {node: Pusher(SERVICE, fw) for node, fw in s.firewall_nodes.items()}
        else:
            firewall.append(Pusher(SERVICE, s.firewall))
        self.stop.install_signal_handlers()
        self._install_hup()
        log.info(
            "ml-detector running",
            extra={
                "input": s.input.endpoint,
                "engine": s.engine,
                "models": self.detector.state.models.versions,
            },
        )
        total = 0
        try:
            while not self.stop.is_set():
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload_from_file()
                msg = puller.recv(100)
                if msg is None:
                    continue
                total += self.process(self._gather(puller, msg), firewall, rag)
                puller.done()  # reliable input: acknowledged once the events were sent on
            while (msg := puller.recv(0)) is not None:  # drain what is already queued
                total += self.process(self._gather(puller, msg), firewall, rag)
                puller.done()
        finally:
            puller.close()
            for out in [*firewall, *rag, *self.firewalls.values()]:
                out.close()
            log.info("ml-detector stopped", extra={"reason": self.stop.reason, "flows_scored": total})
        return 0

    def _gather(self, puller: Puller | WorkReceiver, first: object) -> list[flow_pb2.FlowBatch]:
        """The first batch plus whatever arrives within max_wait_ms, up to max_flows flows."""
        assert isinstance(first, flow_pb2.FlowBatch)
        b = self.settings.batch
        batches, n = [first], len(first.flows)
        deadline = time.monotonic() + b.max_wait_ms / 1000
        while n < b.max_flows:
            left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            nxt = puller.recv(left_ms)
            if nxt is None:
                break
            assert isinstance(nxt, flow_pb2.FlowBatch)
            batches.append(nxt)
            n += len(nxt.flows)
        return batches
