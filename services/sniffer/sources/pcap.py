"""The pcap capture source: files read whole, decoded in vectorised chunks, flows out.

Time comes from the packets (an injected clock), so a `fast` replay gives the same records every
time. `realtime` waits between chunks so packets are taken in at the capture's own pace (times
`speed`); `loop` starts the list again with times shifted forward so flows never go backwards.
Each file pass has its own table, flushed at the end of the file (END_REASON_WINDOW).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from libs.common.lifecycle import StopFlag
from ml_defender.v1 import flow_pb2
from services.sniffer.config import SnifferSettings
from services.sniffer.decode import decode
from services.sniffer.errors import CaptureFileError
from services.sniffer.flows import FlowTable, TableCounters, add_counters
from services.sniffer.pcapfile import Capture, read_capture

log = logging.getLogger(__name__)


class PcapSource:
    """Flow records from pcap/pcapng files (`capture.pcap_paths`)."""

    name = "pcap"

    def __init__(self, settings: SnifferSettings) -> None:
        self.settings = settings
        self.totals = TableCounters()
        self.table: FlowTable | None = None
        self.file_errors = 0
        self.passes = 0
        self.last_error: CaptureFileError | None = None
        self._shift_ns = 0

    def update_settings(self, settings: SnifferSettings) -> None:
        """Hot fields only: flow timeouts reach the open table at once."""
        self.settings = settings
        if self.table is not None:
            self.table.update_settings(settings.flows)

    def stats(self) -> dict[str, int]:
        t = TableCounters()
        add_counters(t, self.totals)
        if self.table is not None:
            add_counters(t, self.table.counters)
        out = {
            "packets": t.packets,
            "bytes": t.bytes,
            "ip_packets": t.ip_packets,
            "flows": t.flows_exported,
            "evicted": t.evicted,
            "late_flows_absorbed": t.late_flows_absorbed,
            "late_packets_absorbed": t.late_packets_absorbed,
            "table_flows": len(self.table) if self.table is not None else 0,
            "file_errors": self.file_errors,
            "passes": self.passes,
        }
        out.update({f"malformed_{k}": v for k, v in t.malformed.items()})
        out.update({f"end_{k.lower()}": v for k, v in t.exported_by_reason.items()})
        return out

    def close(self) -> None:
        self.table = None

    def batches(self, stop: StopFlag) -> Iterator[list[flow_pb2.FlowRecord]]:
        cap_settings = self.settings.capture
        if not cap_settings.pcap_paths:
            log.warning("pcap source has no files (capture.pcap_paths is empty)")
            return
        while not stop.is_set():
            for path in cap_settings.pcap_paths:
                if stop.is_set():
                    break
                yield from self._one_file(path, stop)
            self.passes += 1
            if not cap_settings.loop or self.file_errors >= len(cap_settings.pcap_paths) * self.passes:
                break

    def _one_file(self, path: str, stop: StopFlag) -> Iterator[list[flow_pb2.FlowRecord]]:
        try:
            cap = read_capture(path)
        except CaptureFileError as exc:
            self._file_error(exc)
            return
        if cap.packets == 0:
            if cap.error is not None:
                self._file_error(cap.error)
            return
        s = self.settings
        shift = self._shift_ns
        if s.capture.rebase_time and self.passes == 0 and shift == 0:
            shift = time.time_ns() - int(cap.ts_ns[0])
        ts = cap.ts_ns + shift
        self.table = FlowTable(s, interface=Path(path).name)
        try:
            if s.capture.pace == "fast":
                yield from self._fast(cap, ts, stop)
            else:
                yield from self._realtime(cap, ts, stop)
        finally:
            assert self.table is not None
            rest = self.table.flush()
            add_counters(self.totals, self.table.counters)
            self.table = None
        if rest:
            yield rest
        span = int(ts[-1] - ts[0]) if len(ts) else 0
        self._shift_ns = shift + span + 1_000_000  # the next pass starts 1 ms after this one ended
        if cap.error is not None:
            self._file_error(cap.error)

    def _feed(self, cap: Capture, ts: np.ndarray, lo: int, hi: int) -> list[flow_pb2.FlowRecord]:
        assert self.table is not None
        pk = decode(cap.data, cap.offsets[lo:hi], cap.caplens[lo:hi], ts[lo:hi], cap.linktypes[lo:hi])
        self.table.add_packets(pk)
        return self.table.expire(int(ts[hi - 1]))

    def _fast(self, cap: Capture, ts: np.ndarray, stop: StopFlag) -> Iterator[list[flow_pb2.FlowRecord]]:
        chunk = self.settings.capture.chunk_packets
        for lo in range(0, cap.packets, chunk):
            if stop.is_set():
                return
            yield self._feed(cap, ts, lo, min(lo + chunk, cap.packets))

    def _realtime(self, cap: Capture, ts: np.ndarray, stop: StopFlag) -> Iterator[list[flow_pb2.FlowRecord]]:
        speed = self.settings.capture.speed
        step_s = self.settings.flows.export_interval_ms / 1000
        chunk = self.settings.capture.chunk_packets
        t0_wall = time.monotonic()
        t0_pkt = int(ts[0])
        due_s = (ts - t0_pkt) / 1e9 / speed  # seconds after start when each packet is due
        done = 0
        while done < cap.packets and not stop.is_set():
            elapsed = time.monotonic() - t0_wall
            upto = int(np.searchsorted(due_s, elapsed, side="right"))
            upto = min(max(upto, done), done + chunk)
            if upto > done:
                yield self._feed(cap, ts, done, upto)
                done = upto
            else:
                assert self.table is not None
                now_pkt = t0_pkt + int(elapsed * speed * 1e9)
                yield self.table.expire(now_pkt)
            if done < cap.packets:
                wait = min(step_s, max(0.0, float(due_s[done]) - (time.monotonic() - t0_wall)))
                if wait > 0:
                    stop.wait(wait)

    def _file_error(self, exc: CaptureFileError) -> None:
        self.file_errors += 1
        self.last_error = exc
        log.error("capture file problem: %s", exc.message, extra={"file": exc.where})
