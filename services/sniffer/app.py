"""The sniffer service: capture source -> fast detector -> FlowBatch over ZeroMQ PUSH.

Wiring only; the flow math lives in flows.py and the rules in fast_detector.py. Settings are one
immutable object swapped whole by `update_settings` (hot fields only; see config.HOT_FIELDS).
SIGTERM drains: the source flushes its table, the last batch is sent, the socket closes with
linger, and the process exits 0.
"""

from __future__ import annotations

import logging
import threading
import time

from libs.common.cli import package_version
from libs.common.lifecycle import StopFlag
from libs.common.metrics import build_info, start_metrics_server
from libs.common.workq import WorkSender, open_sender
from libs.common.zmqio import Pusher
from ml_defender.v1 import flow_pb2
from services.sniffer.config import SnifferSettings, is_hot
from services.sniffer.errors import SnifferError
from services.sniffer.fast_detector import FastDetector
from services.sniffer.metrics import SnifferMetrics, sniffer_metrics
from services.sniffer.sources import FlowSource, open_source

log = logging.getLogger(__name__)


class SnifferApp:
    """One running sniffer; `run()` returns the process exit code."""

    def __init__(
        self,
        settings: SnifferSettings,
        stop: StopFlag | None = None,
        exit_when_done: bool = False,
        source: FlowSource | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop or StopFlag()
        self.exit_when_done = exit_when_done
        self.metrics: SnifferMetrics = sniffer_metrics()
        self.detector = FastDetector(settings.fast_detector)
        self._source = source
        self._lock = threading.Lock()
        self._sequence = 0
        self._last_stats: dict[str, int] = {}
        self._fired_seen: dict[str, int] = {}
        self.done = threading.Event()  # set when the source has nothing more to give
        self._no_consumer = False  # stopping with nobody reading: remaining batches are dropped

    def update_settings(self, new: SnifferSettings) -> list[str]:
        """Apply a new settings object if every changed field is hot; returns the changed paths."""
        changed = _diff(self.settings.model_dump(), new.model_dump())
        cold = [p for p in changed if not is_hot(p)]
        if cold:
            raise SnifferError(
                f"restart required for {', '.join(cold)}",
                "settings",
                "restart the sniffer to apply these fields",
            )
        with self._lock:
            self.settings = new
            self.detector.update_settings(new.fast_detector)
            updater = getattr(self._source, "update_settings", None)
            if updater is not None:
                updater(new)
        if "log_level" in changed:
            logging.getLogger().setLevel(new.log_level.upper())
        return changed

    def run(self) -> int:
        s = self.settings
        output = s.output
        if s.capture.source == "pcap" and output.send_timeout_ms != -1:
            output = output.model_copy(update={"send_timeout_ms": -1})  # replay: back-pressure, no drops
        source = self._source or open_source(s)
        self._source = source
        start_metrics_server(s.metrics.host, s.metrics.port)
        build_info("sniffer", package_version(), s.node_id)
        pusher = open_sender("sniffer", output)  # output.reliable: acknowledged, redelivered
        log.info(
            "sniffer running",
            extra={"source": source.name, "endpoint": output.endpoint, "node_id": s.node_id},
        )
        pending: list[flow_pb2.FlowRecord] = []
        last_send = time.monotonic()
        try:
            for recs in source.batches(self.stop):
                pending.extend(recs)
                self._update_metrics(source)  # first: counts stay live while a send waits
                last_send = self._send_ready(pusher, pending, last_send, force=False)
            self._send_ready(pusher, pending, last_send, force=True)
            self._update_metrics(source)
            self.done.set()
            log.info("capture source finished", extra=source.stats())
            if not self.exit_when_done:
                while not self.stop.wait(0.5):
                    pass
        finally:
            if pending:
                self._send_ready(pusher, pending, last_send, force=True)
            source.close()
            pusher.close()
        log.info("sniffer stopped", extra={"reason": self.stop.reason or "done", "batches": self._sequence})
        return 0

    def _send_ready(
        self, pusher: Pusher | WorkSender, pending: list[flow_pb2.FlowRecord], last_send: float, force: bool
    ) -> float:
        fs = self.settings.flows
        now = time.monotonic()
        due = force or (pending and (now - last_send) * 1000 >= fs.export_interval_ms)
        while len(pending) >= fs.export_batch_size or (due and pending):
            chunk = pending[: fs.export_batch_size]
            del pending[: fs.export_batch_size]
            self._send(pusher, chunk)
            last_send = time.monotonic()
        return last_send

    def _send(self, pusher: Pusher | WorkSender, flows: list[flow_pb2.FlowRecord]) -> None:
        with self._lock:
            fast = self.detector.observe(flows)
        now = time.time_ns()
        for f in flows:
            f.exported_ns = now
        self._sequence += 1
        batch = flow_pb2.FlowBatch(
            flows=flows, fast=fast, node_id=self.settings.node_id, sequence=self._sequence, sent_ns=now
        )
        m = self.metrics
        if self._wait_writable(pusher) and pusher.send(batch):
            m.batches_sent.inc()
        else:
            m.batches_dropped.inc()
            log.warning("flow batch dropped: consumer stayed full", extra={"flows": len(flows)})
        scored = sum(1 for r in fast if r.score > 0)
        if scored:
            m.flows_scored.inc(scored)
        for rule, count in self.detector.fired.items():
            delta = count - self._fired_seen.get(rule, 0)
            if delta:
                m.fast_rules_fired.labels(rule).inc(delta)
                self._fired_seen[rule] = count
        m.fast_sources.set(len(self.detector))

    def _wait_writable(self, pusher: Pusher | WorkSender) -> bool:
        """Back-pressure without hanging: wait for room while running; once a stop is requested,
        wait at most the socket's linger for a consumer, then give the batch up (counted)."""
        if pusher.settings.send_timeout_ms != -1:
            return True  # the socket's own timeout decides, and Pusher counts the drop
        waited_ms = 0
        while not pusher.writable(0 if self._no_consumer else 200):
            if self.stop.is_set():
                waited_ms += 200
                if self._no_consumer or waited_ms >= pusher.settings.linger_ms:
                    self._no_consumer = True  # the rest of the drain does not wait again
                    return False
        return True

    def _update_metrics(self, source: FlowSource) -> None:
        st = source.stats()
        m = self.metrics
        last = self._last_stats

        def delta(key: str) -> int:
            return max(0, st.get(key, 0) - last.get(key, 0))

        m.packets.inc(delta("packets"))
        m.bytes.inc(delta("bytes"))
        m.evictions.inc(delta("evicted"))
        m.late_packets_absorbed.inc(delta("late_packets_absorbed"))
        m.capture_file_errors.inc(delta("file_errors"))
        for key in st:
            if key.startswith("malformed_") and (d := delta(key)):
                m.malformed.labels(key[len("malformed_") :]).inc(d)
            elif key.startswith("end_") and (d := delta(key)):
                m.flows_exported.labels(key[len("end_") :].upper()).inc(d)
        m.table_flows.set(st.get("table_flows", 0))
        if "map_entries" in st:
            m.xdp_map_entries.set(st["map_entries"])
        if "map_capacity" in st:
            m.xdp_map_capacity.set(st["map_capacity"])
        if "map_fill_permille" in st:
            m.xdp_map_fill.set(st["map_fill_permille"])
            m.xdp_ringbuf_full.inc(delta("ringbuf_full"))
            m.xdp_lost_packets.inc(delta("lost_packets"))
            m.xdp_notices_lost.inc(delta("notice_lost"))
        self._last_stats = st


def _diff(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two dumped settings documents."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out.extend(_diff(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    return [] if old == new else [prefix.rstrip(".")]
