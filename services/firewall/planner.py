"""Turning block requests into kernel operations: allow-list, dedup, escalation, caps, batches.

Pure and single-threaded: time comes from an injected clock and randomness from an injected
generator, so tests drive it without sockets or sleeps. The app calls `take()`, applies the ops
with a backend, then reports `committed()` or `failed()`; the view of what is banned changes only
on a commit, so a failed transaction leaves it equal to the kernel.
"""

from __future__ import annotations

import heapq
import math
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from services.firewall.config import FirewallSettings
from services.firewall.errors import TargetError
from services.firewall.model import Element, Op
from services.firewall.targets import AllowList, Net, family, is_host, parse_target

Outcome = Literal["queued", "refreshed", "deduplicated", "covered"]
CACHE_MAX = 65_536


@dataclass(frozen=True)
class Policy:
    """The hot-reloadable numbers of the planner, taken from FirewallSettings."""

    timeout_s: float = 3600.0
    jitter_fraction: float = 0.1
    escalation_factor: float = 2.0
    max_timeout_s: float = 86400.0
    offence_memory_s: float = 86400.0
    offender_memory_entries: int = 100_000
    refresh_min_s: float = 60.0
    max_elements_v4: int = 65_536
    max_elements_v6: int = 65_536
    min_prefix_v4: int = 16
    min_prefix_v6: int = 32
    batch_size: int = 1024
    batch_interval_s: float = 0.005

    @classmethod
    def from_settings(cls, s: FirewallSettings) -> Policy:
        return cls(
            timeout_s=s.timeout_s,
            jitter_fraction=s.jitter_fraction,
            escalation_factor=s.escalation_factor,
            max_timeout_s=s.max_timeout_s,
            offence_memory_s=s.offence_memory_s,
            offender_memory_entries=s.offender_memory_entries,
            refresh_min_s=s.refresh_min_s,
            max_elements_v4=s.max_elements_v4,
            max_elements_v6=s.max_elements_v6,
            min_prefix_v4=s.min_prefix_v4,
            min_prefix_v6=s.min_prefix_v6,
            batch_size=s.batch_size,
            batch_interval_s=s.batch_interval_ms / 1000.0,
        )

    def cap(self, fam: str) -> int:
        return self.max_elements_v4 if fam == "v4" else self.max_elements_v6


def _address_text(raw: bytes) -> str:
    """4 or 16 network-order bytes as text; any other length is refused as invalid."""
    if len(raw) not in (4, 16):
        raise TargetError(
            "invalid",
            f"an address of {len(raw)} bytes (need 4 or 16)",
            "block request",
            "send an IPv4 or IPv6 source address",
        )
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


@dataclass(slots=True)
class Ban:
    net: Net
    timeout_s: float
    expires_at: float
    offences: int


class Planner:
    """The firewall's view of the bans plus the operations waiting for the next transaction."""

    def __init__(
        self,
        policy: Policy,
        allow: AllowList,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.allow = allow
        self.clock = clock
        self.rng = rng or random.Random()
        self.bans: dict[Net, Ban] = {}
        self.pending: dict[Net, Op] = {}
        self.pending_since: float | None = None
        self.history: OrderedDict[Net, tuple[int, float]] = OrderedDict()
        self._cidrs: dict[str, set[Net]] = {"v4": set(), "v6": set()}  # banned or pending add
        self._nbans: dict[str, int] = {"v4": 0, "v6": 0}
        self._kinds: dict[tuple[str, str], int] = {(f, k): 0 for f in ("v4", "v6") for k in ("host", "cidr")}
        self._pending_new: dict[str, int] = {"v4": 0, "v6": 0}  # queued adds of nets not banned yet
        self._expiry: list[tuple[float, int, Net]] = []
        self._seq = 0
        self._cache: dict[str | bytes, Net] = {}  # request text or raw address bytes -> allowed net

    # ----- configuration -----
    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._cache.clear()

    def set_allow(self, allow: AllowList) -> list[Net]:
        """Swap the allow-list; bans it now covers are queued for removal (returned)."""
        self.allow = allow
        self._cache.clear()
        removed = []
        for net in list(self.pending):
            op = self.pending[net]
            if op.kind == "add" and allow.match(net) is not None and net not in self.bans:
                self._drop_pending(net)
        for net in list(self.bans):
            if allow.match(net) is not None:
                self._queue(Op("delete", net, reason="allow_listed"))
                removed.append(net)
        return removed

    # ----- requests -----
    def resolve(self, target: str | bytes | Net) -> Net:
        """Validate and allow-list check one target; raises TargetError with the reason.

        `bytes` is an address as an event carries it (4 or 16 bytes, network order): a repeat is
        one dict lookup, without building its text, so a flood of repeats stays cheap.
        """
        if not isinstance(target, str | bytes):
            net = target
            self._check_prefix(net)
            self.allow.check(net)
            return net
        cached = self._cache.get(target)
        if cached is not None:
            return cached
        text = target if isinstance(target, str) else _address_text(target)
        net = parse_target(text, self.policy.min_prefix_v4, self.policy.min_prefix_v6)
        self.allow.check(net)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[target] = net
        return net

    def _check_prefix(self, net: Net) -> None:
        parse_target(str(net), self.policy.min_prefix_v4, self.policy.min_prefix_v6)

    def block(self, target: str | bytes | Net, captured_ns: int = 0, now: float | None = None) -> Outcome:
        """Plan a ban; a repeat re-arms the timeout, a first offence after an expiry escalates it."""
        net = self.resolve(target)
        now = self.clock() if now is None else now
        pending = self.pending.get(net)
        if pending is not None and pending.kind == "add":
            return "deduplicated"
        ban = self.bans.get(net)
        known = ban is not None or pending is not None  # the kernel may still hold the element
        if ban is not None and ban.expires_at <= now and pending is None:
            self._remove_ban(net)  # expired in the kernel; expire() has not run yet
            self._remember(net, ban.offences, now)
            ban = None
        if ban is not None and ban.expires_at > now and pending is None:
            if math.isinf(ban.timeout_s):
                return "deduplicated"  # a permanent element (added by hand without a timeout)
            elapsed = ban.timeout_s - (ban.expires_at - now)
            if elapsed < self.policy.refresh_min_s:
                return "deduplicated"
            self._queue(Op("add", net, int(ban.timeout_s * 1000), ban.offences, True, captured_ns, now), now)
            return "refreshed"
        fam = family(net)
        covering = self._covering(net) if not is_host(net) else None
        if covering is not None:
            return "covered"
        used = self._nbans[fam] + self._pending_new[fam]
        if ban is None and used >= self.policy.cap(fam):
            raise TargetError(
                "over_capacity",
                f"{net} refused: {used} {fam} bans reach the cap of {self.policy.cap(fam)}",
                "block request",
                f"raise max_elements_{fam} or shorten timeout_s",
            )
        offences = self._offences(net, now)
        timeout_s = self._timeout(offences)
        if not is_host(net):
            for inner in self._contained(net):
                inner_ban = self.bans.get(inner)
                if inner_ban is not None:
                    timeout_s = max(timeout_s, inner_ban.expires_at - now)
                    offences = max(offences, inner_ban.offences)
                    self._queue(Op("delete", inner, reason="superseded"), now)
                else:
                    self._drop_pending(inner)
        self._queue(Op("add", net, max(1, int(timeout_s * 1000)), offences, known, captured_ns, now), now)
        return "queued"

    def unblock(self, net: Net, reason: str = "operator", now: float | None = None) -> bool:
        """Queue the removal of a ban; False when neither banned nor pending."""
        known = net in self.bans or net in self.pending
        if net in self.pending and net not in self.bans:
            self._drop_pending(net)
            return True
        self._queue(Op("delete", net, reason=reason), now)
        if reason == "operator":
            self.history.pop(net, None)
        return known

    # ----- batches -----
    def due(self, now: float | None = None) -> bool:
        if not self.pending:
            return False
        now = self.clock() if now is None else now
        assert self.pending_since is not None
        return (
            len(self.pending) >= self.policy.batch_size
            or now - self.pending_since >= self.policy.batch_interval_s
        )

    def next_deadline(self) -> float | None:
        """Clock time at which the pending batch must be sent, or None when nothing waits."""
        if self.pending_since is None:
            return None
        return self.pending_since + self.policy.batch_interval_s

    def take(self, now: float | None = None) -> list[Op]:
        """Remove and return the next batch (at most batch_size ops, in request order)."""
        n = self.policy.batch_size
        ops = []
        for net in list(self.pending)[:n]:
            op = self._pend_pop(net)
            assert op is not None
            ops.append(op)
        if self.pending:
            self.pending_since = self.clock() if now is None else now
        else:
            self.pending_since = None
        return ops

    def committed(self, ops: Iterable[Op], now: float | None = None) -> None:
        """The kernel holds `ops` now: update the view."""
        now = self.clock() if now is None else now
        for op in ops:
            if op.kind == "add":
                timeout_s = op.timeout_ms / 1000.0
                self._set_ban(Ban(op.net, timeout_s, now + timeout_s, op.offences))
            else:
                self._remove_ban(op.net)

    def failed(self, ops: Iterable[Op]) -> None:
        """The kernel refused `ops`: forget the planned adds so the view stays equal to the kernel."""
        for op in ops:
            if op.kind == "add" and op.net not in self.bans and op.net not in self.pending:
                self._cidrs[family(op.net)].discard(op.net)

    # ----- time and the kernel -----
    def expire(self, now: float | None = None) -> list[Ban]:
        """Forget bans whose timeout ran out (the kernel removed them itself)."""
        now = self.clock() if now is None else now
        gone: list[Ban] = []
        while self._expiry and self._expiry[0][0] <= now:
            at, _seq, net = heapq.heappop(self._expiry)
            ban = self.bans.get(net)
            if ban is None or ban.expires_at != at:
                continue
            if net in self.pending:
                continue  # a refresh or removal is on its way; commit decides
            self._remove_ban(net)
            self._remember(net, ban.offences, now)
            gone.append(ban)
        return gone

    def load(self, elements: Iterable[Element], now: float | None = None) -> int:
        """Replace the view with what the kernel holds (reconcile at start or on demand)."""
        now = self.clock() if now is None else now
        self.bans.clear()
        self._expiry.clear()
        self._cidrs = {"v4": set(), "v6": set()}
        self._nbans = {"v4": 0, "v6": 0}
        self._kinds = {(f, k): 0 for f in ("v4", "v6") for k in ("host", "cidr")}
        self._pending_new = {"v4": 0, "v6": 0}
        pend = self.pending
        self.pending = {}
        n = 0
        for el in elements:
            timeout_s = el.timeout_ms / 1000.0
            expires = el.expires_ms / 1000.0 if el.timeout_ms else float("inf")
            self._set_ban(Ban(el.net, timeout_s or float("inf"), now + expires, el.offences))
            n += 1
        for op in pend.values():  # keep what was planned and not yet applied
            self._pend_put(op)
        return n

    def counts(self) -> dict[tuple[str, str], int]:
        """Bans by (family, kind), maintained on every change (read by the metrics each second)."""
        return dict(self._kinds)

    # ----- internals -----
    def _timeout(self, offences: int) -> float:
        p = self.policy
        base = min(p.timeout_s * p.escalation_factor ** (offences - 1), p.max_timeout_s)
        jitter = self.rng.uniform(-p.jitter_fraction, p.jitter_fraction) if p.jitter_fraction else 0.0
        return base * (1.0 + jitter)

    def _offences(self, net: Net, now: float) -> int:
        past = self.history.get(net)
        if past is None or now - past[1] > self.policy.offence_memory_s:
            return 1
        return past[0] + 1

    def _remember(self, net: Net, offences: int, now: float) -> None:
        if self.policy.offender_memory_entries <= 0:
            return
        self.history[net] = (offences, now)
        self.history.move_to_end(net)
        while len(self.history) > self.policy.offender_memory_entries:
            self.history.popitem(last=False)

    def _covering(self, net: Net) -> Net | None:
        for c in self._cidrs[family(net)]:
            if c != net and c.prefixlen < net.prefixlen and net.subnet_of(c):  # type: ignore[arg-type]
                return c
        return None

    def _contained(self, net: Net) -> list[Net]:
        return [
            c
            for c in self._cidrs[family(net)]
            if c != net and c.prefixlen > net.prefixlen and c.subnet_of(net)  # type: ignore[arg-type]
        ]

    def _queue(self, op: Op, now: float | None = None) -> None:
        if not self.pending:
            self.pending_since = self.clock() if now is None else now
        self._pend_put(op)

    def _pend_put(self, op: Op) -> None:
        """Queue `op` last (the newest op for a net replaces the older one)."""
        net = op.net
        if net in self.pending:
            self._pend_pop(net)
        self.pending[net] = op
        if self.pending_since is None:
            self.pending_since = self.clock()
        if op.kind == "add":
            fam = "v4" if net.version == 4 else "v6"
            if net not in self.bans:
                self._pending_new[fam] += 1
            if net.prefixlen != net.max_prefixlen:
                self._cidrs[fam].add(net)

    def _pend_pop(self, net: Net) -> Op | None:
        op = self.pending.pop(net, None)
        if op is None or op.kind != "add":
            return op
        if net not in self.bans:
            fam = "v4" if net.version == 4 else "v6"
            self._pending_new[fam] -= 1
            if net.prefixlen != net.max_prefixlen:
                self._cidrs[fam].discard(net)
        return op

    def _drop_pending(self, net: Net) -> None:
        self._pend_pop(net)
        if not self.pending:
            self.pending_since = None

    def _set_ban(self, ban: Ban) -> None:
        net = ban.net
        fam = "v4" if net.version == 4 else "v6"
        host = net.prefixlen == net.max_prefixlen
        if net not in self.bans:
            self._nbans[fam] += 1
            self._kinds[(fam, "host" if host else "cidr")] += 1
        self.bans[net] = ban
        if not host:
            self._cidrs[fam].add(net)
        self._seq += 1
        heapq.heappush(self._expiry, (ban.expires_at, self._seq, net))

    def _remove_ban(self, net: Net) -> None:
        if self.bans.pop(net, None) is not None:
            fam = family(net)
            self._nbans[fam] -= 1
            self._kinds[(fam, "host" if is_host(net) else "cidr")] -= 1
            op = self.pending.get(net)
            if not is_host(net) and not (op is not None and op.kind == "add"):
                self._cidrs[fam].discard(net)
