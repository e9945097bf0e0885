"""The firewall service: DetectionEvents in, batched kernel transactions out.

`Firewall` holds the planner, the backend and the metrics and has no socket, so the operator CLI
and the tests drive the same code as `run`. `run()` adds the ZeroMQ PULL socket, the metrics
endpoint and the signal handling; SIGTERM stops intake, drains the queue and commits the pending
batch before exiting.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import logging
import math
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from libs.common.cli import package_version
from libs.common.errors import ConfigError, MLDefenderError
from libs.common.events import enum_name
from libs.common.lifecycle import StopFlag
from libs.common.log import setup_logging
from libs.common.metrics import build_info, start_metrics_server
from libs.common.settings import load_settings
from libs.common.zmqio import Puller
from libs.watcher import ConfigRuntime, EtcdSettings
from ml_defender.v1 import detection_pb2
from services.firewall import metrics as m
from services.firewall.backends import Backend, open_backend
from services.firewall.config import HOT_FIELDS, FirewallSettings, hot_changes, restart_changes
from services.firewall.errors import BackendError, TargetError
from services.firewall.model import Op
from services.firewall.planner import Ban, Planner, Policy
from services.firewall.targets import AllowList, Net, net_text, parse_allow_entries, peer_host

log = logging.getLogger("services.firewall")
LOG_PER_REASON = 10  # rejection log lines per reason per window; the metric counts all of them
LOG_WINDOW_S = 10.0
TURN_MAX_EVENTS = 1000  # events per loop turn (~30 ms): a flood cannot starve stop, reloads or expiry


def own_addresses() -> list[Net]:
    """Addresses configured on this node's interfaces (`ip -j addr`), as host networks."""
    try:
        proc = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True
        )
        doc = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("cannot list this node's addresses (%s); they are not allow-listed", exc)
        return []
    out: list[Net] = []
    for link in doc:
        for a in link.get("addr_info", []):
            try:
                out.append(ipaddress.ip_network(a["local"]))
            except (KeyError, ValueError):
                continue
    return out


def resolve_peer(peer: str) -> list[Net]:
    """A peer (address, host name or URL) as host networks; a name that does not resolve is an error."""
    host = peer_host(peer)
    try:
        return [ipaddress.ip_network(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            f"allow-list peer {peer!r} does not resolve: {exc}",
            "allow.peers",
            "use an address or fix DNS/hosts",
        ) from None
    return list(dict.fromkeys(ipaddress.ip_network(str(i[4][0]).split("%")[0]) for i in infos))


def build_allow_list(settings: FirewallSettings, own: Callable[[], list[Net]] = own_addresses) -> AllowList:
    """Loopback, link-local, configured CIDRs, peers and (by default) this node's own addresses."""
    try:
        entries = parse_allow_entries(settings.allow.cidrs, "allow.cidrs")
    except TargetError as exc:
        raise ConfigError(exc.what, "allow.cidrs", exc.fix) from None
    for peer in settings.allow.peers:
        entries += resolve_peer(peer)
    if settings.allow.own_addresses:
        entries += own()
    return AllowList(entries)


class Firewall:
    """Planner + backend + metrics: the service without its socket."""

    def __init__(
        self,
        settings: FirewallSettings,
        backend: Backend,
        allow: AllowList | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.clock = clock
        self.planner = Planner(Policy.from_settings(settings), allow or build_allow_list(settings), clock)
        self._log_window = (0.0, dict[str, int]())
        # label children resolved once: a request must cost microseconds
        self._outcomes = {o: m.REQUESTS.labels(o) for o in ("queued", "refreshed", "deduplicated", "covered")}
        self._decisions: dict[int, tuple[str, Any]] = {}  # enum number -> (name, counter child)
        self._last_tick = 0.0
        self._last_reconcile = clock()

    # ----- lifecycle -----
    def start(self) -> int:
        """Create what is missing in the kernel, then take the kernel's bans as the view."""
        self.backend.setup()
        return self.reconcile()

    def reconcile(self) -> int:
        elements = self.backend.read()
        n = self.planner.load(elements)
        stale = self.planner.set_allow(self.planner.allow)  # bans that the allow-list forbids
        m.RECONCILED.set(n)
        self._update_gauges()
        self._last_reconcile = self.clock()
        log.info("reconciled with the kernel", extra={"elements": n, "backend": self.backend.name})
        if stale:
            log.warning(
                "allow-listed bans found in the kernel; removing", extra={"targets": [str(x) for x in stale]}
            )
        return n

    def apply_settings(self, new: FirewallSettings, allow: AllowList | None = None) -> list[Net]:
        """Swap the hot fields atomically; a change of a restart field is refused, nothing applied.

        Everything that can fail (restart fields, resolving peers) runs before the first assignment,
        so a refused reload leaves the previous settings whole. Returns the bans the new allow-list
        removes (queued for the next transaction).
        """
        blocked = restart_changes(self.settings, new)
        if blocked:
            raise ConfigError(
                f"these settings need a restart: {', '.join(blocked)}",
                "reload",
                "restart mld-firewall to change them; hot fields: " + ", ".join(HOT_FIELDS),
            )
        allow = allow or build_allow_list(new)
        changes = hot_changes(self.settings, new)
        self.settings = new
        self.planner.set_policy(Policy.from_settings(new))
        logging.getLogger().setLevel(new.log_level.upper())
        removed = self.planner.set_allow(allow)
        log.info(
            "settings applied",
            extra={
                "changes": {k: [str(a), str(b)] for k, (a, b) in changes.items()},
                "unbanned": len(removed),
            },
        )
        return removed

    # ----- requests -----
    def handle_event(self, ev: detection_pb2.DetectionEvent) -> str | None:
        """One event: count its decision, and plan a ban of its source when the decision blocks.

        A flood of repeats for banned sources must not delay a new attacker's ban behind it, so the
        common path is a few dict lookups (decision and address caches, no text built).
        """
        code = ev.decision
        entry = self._decisions.get(code)
        if entry is None:
            try:
                name = enum_name(detection_pb2.Decision, code)
            except ValueError:  # proto3 enums are open: a newer or corrupt sender may use any number
                name = "UNKNOWN"
            entry = self._decisions.setdefault(code, (name, m.DECISIONS.labels(name)))
        decision, counter = entry
        counter.inc()
        if decision not in self.settings.decisions:
            return None
        src = ev.flow.key.src_addr
        if len(src) not in (4, 16):
            m.REJECTED.labels("invalid").inc()
            self._log_rejection(
                "invalid", f"event {ev.event_id}: src_addr has {len(src)} bytes (need 4 or 16)"
            )
            return "invalid"
        return self.request(src, ev.timestamps.captured_ns)

    def request(self, target: str | bytes | Net, captured_ns: int = 0) -> str:
        """Plan one ban; returns the outcome or the rejection reason (both counted)."""
        try:
            outcome = self.planner.block(target, captured_ns)
        except TargetError as exc:
            m.REJECTED.labels(exc.reason).inc()
            self._log_rejection(exc.reason, exc.message)
            return exc.reason
        self._outcomes[outcome].inc()
        return outcome

    def unblock(self, net: Net) -> bool:
        return self.planner.unblock(net)

    def _log_rejection(self, reason: str, message: str) -> None:
        now = self.clock()
        start, counts = self._log_window
        if now - start > LOG_WINDOW_S:
            suppressed = {k: v - LOG_PER_REASON for k, v in counts.items() if v > LOG_PER_REASON}
            if suppressed:
                log.warning(
                    "block requests refused (not logged one by one)", extra={"suppressed": suppressed}
                )
            self._log_window = (now, {})
            counts = self._log_window[1]
        counts[reason] = counts.get(reason, 0) + 1
        if counts[reason] <= LOG_PER_REASON:
            log.warning("block request refused: %s", message, extra={"reason": reason})

    # ----- batches -----
    def poll(self) -> int:
        """Commit the pending batch when due and do the once-a-second housekeeping."""
        n = 0
        while self.planner.due():
            n += self.commit_batch()
        now = self.clock()
        if now - self._last_tick >= 1.0:
            self._last_tick = now
            self.tick(now)
        return n

    def tick(self, now: float) -> None:
        gone = self.planner.expire(now)
        if gone:
            m.UNBANNED.labels("expired").inc(len(gone))
        ri = self.settings.reconcile_interval_s
        if ri and now - self._last_reconcile >= ri and not self.planner.pending:
            try:
                self.reconcile()
            except BackendError as exc:
                log.error("periodic reconcile failed: %s", exc.message)
                self._last_reconcile = now
        self._update_gauges()

    def drain(self) -> int:
        """Commit everything pending (at stop, and for the operator CLI)."""
        n = 0
        while self.planner.pending:
            n += self.commit_batch()
        return n

    def commit_batch(self) -> int:
        """Apply the next batch as one transaction; on refusal retry once after setup, then op by op."""
        ops = self.planner.take()
        if not ops:
            return 0
        m.PENDING.set(len(self.planner.pending))
        try:
            self._apply(ops)
        except BackendError as exc:
            m.BATCHES.labels("failed").inc()
            log.error("transaction of %d ops refused: %s; retrying", len(ops), exc.message)
            try:
                self.backend.setup()  # the table may have been deleted under us ...
                self.reconcile()  # ... and its bans with it: a repeat must ban again, not dedup
                self._apply(ops)
            except BackendError:
                self._apply_one_by_one(ops)
        return len(ops)

    def _apply(self, ops: list[Op]) -> None:
        t0 = time.perf_counter()
        self.backend.apply(ops)
        m.COMMIT_SECONDS.observe(time.perf_counter() - t0)
        m.BATCHES.labels("committed").inc()
        m.BATCH_SIZE.observe(len(ops))
        self._committed(ops)

    def _apply_one_by_one(self, ops: list[Op]) -> None:
        for op in ops:
            try:
                self._apply([op])
            except BackendError as exc:
                m.FAILED_OPS.labels(op.kind).inc()
                self.planner.failed([op])
                log.error(
                    "kernel refused %s %s: %s",
                    op.kind,
                    net_text(op.net),
                    exc.message,
                    extra={"target": str(op.net)},
                )

    def _committed(self, ops: list[Op]) -> None:
        now = self.clock()
        wall = time.time_ns()
        self.planner.committed(ops, now)
        for op in ops:
            if op.kind == "add":
                if op.captured_ns > 0:
                    m.BLOCK_LATENCY.observe(max(0.0, (wall - op.captured_ns) / 1e9))
                if op.received > 0:
                    m.REQUEST_LATENCY.observe(max(0.0, now - op.received))
            else:
                m.UNBANNED.labels(op.reason or "operator").inc()
        adds = [net_text(op.net) for op in itertools.islice((o for o in ops if o.kind == "add"), 10)]
        removals = [net_text(op.net) for op in itertools.islice((o for o in ops if o.kind == "delete"), 10)]
        log.info(
            "transaction committed",
            extra={
                "ops": len(ops),
                "banned": adds,
                "unbanned": removals,
                "more": max(0, len(ops) - 20),
            },
        )

    def _update_gauges(self) -> None:
        for (fam, kind), n in self.planner.counts().items():
            m.BANNED.labels(fam, kind).set(n)
        m.PENDING.set(len(self.planner.pending))

    def bans(self) -> Iterable[Ban]:
        return self.planner.bans.values()


def reload_from_file(fw: Firewall, path: Path | None) -> bool:
    """SIGHUP: re-read the settings file and apply its hot fields, or keep the last good settings."""
    try:
        fw.apply_settings(load_settings(FirewallSettings, path))
    except MLDefenderError as exc:
        log.error("reload rejected, keeping the last good settings: %s", exc.message)
        return False
    return True


class SettingsMailbox:
    """Hands hot settings from the watcher's thread to the loop: the planner is single-threaded.

    Once the loop runs (`attach`), a step applies at once under `lock`, which the loop holds while
    it works (not while it waits for events): "APPLIED" in the status key is then true, not up to
    one idle wait (100 ms) early. Before that the settings wait here for the loop's first turn.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._item: tuple[FirewallSettings, AllowList] | None = None
        self._fw: Firewall | None = None

    def attach(self, fw: Firewall) -> None:
        """From now on steps apply at once; settings that arrived before are applied first."""
        with self.lock:
            if self._item is not None:
                fw.apply_settings(*self._item)
                self._item = None
            self._fw = fw

    def step(self, _old: FirewallSettings, new: FirewallSettings) -> None:
        """A ConfigRuntime apply step: resolve the allow-list (may raise -> rolled back), then apply."""
        allow = build_allow_list(new)
        with self.lock:
            if self._fw is not None:
                self._fw.apply_settings(new, allow)
            else:
                self._item = (new, allow)


def run(
    settings: FirewallSettings,
    stop: StopFlag | None = None,
    config_path: Path | None = None,
    etcd: EtcdSettings | None = None,
) -> None:
    """The `run` command: receive events until SIGTERM, then drain and commit the pending batch.

    Settings come from etcd through libs.watcher when `etcd` is given (hot fields applied live);
    otherwise SIGHUP re-reads `config_path`.
    """
    setup_logging("firewall", settings.log_level)
    stop = stop or StopFlag()
    reload_requested = threading.Event()
    runtime = ConfigRuntime(
        "firewall",
        FirewallSettings,
        initial=settings,
        hot_fields=HOT_FIELDS,
        etcd=etcd,
        version=package_version(),
    )
    settings = runtime.start()  # before any resource is opened: etcd, else its disk cache, else the file
    mailbox = SettingsMailbox()
    runtime.add_step(mailbox.step)
    try:
        backend = open_backend(settings)
        fw = Firewall(settings, backend)
        fw.start()
        start_metrics_server(settings.metrics.host, settings.metrics.port)
        build_info("firewall", package_version(), settings.node_id)
        name = detection_pb2.DetectionEvent.DESCRIPTOR.full_name
        puller = Puller("firewall", settings.input, {name: detection_pb2.DetectionEvent})
    except BaseException:
        runtime.stop()
        raise
    with contextlib.suppress(ValueError):  # not the main thread (tests): the caller sets the flag
        stop.install_signal_handlers()
        if etcd is None:
            signal.signal(signal.SIGHUP, lambda _s, _f: reload_requested.set())
    log.info(
        "firewall running",
        extra={"backend": backend.name, "input": settings.input.endpoint, "table": settings.table},
    )
    mailbox.attach(fw)
    try:
        while not stop.is_set():
            deadline = fw.planner.next_deadline()
            wait_ms = 100 if deadline is None else max(0, math.ceil((deadline - fw.clock()) * 1000))
            msg = puller.recv(min(wait_ms, 100))
            with mailbox.lock:  # etcd edits apply between two turns, never inside one
                handled = 0
                while msg is not None:  # drain what is queued without blocking ...
                    fw.handle_event(msg)
                    handled += 1
                    if fw.planner.due() or handled >= TURN_MAX_EVENTS:
                        break  # ... but commit a due batch mid-burst, and let a flood yield
                    msg = puller.recv(0)
                fw.poll()
                if reload_requested.is_set():
                    reload_requested.clear()
                    reload_from_file(fw, config_path)
        with mailbox.lock:
            for _ in range(settings.input.hwm):  # what was queued when the stop came; a flood goes on
                if (msg := puller.recv(0)) is None:
                    break
                fw.handle_event(msg)
            n = fw.drain()
        log.info("firewall stopped", extra={"reason": stop.reason, "drained_ops": n})
    finally:
        runtime.stop()
        puller.close()
        backend.close()
