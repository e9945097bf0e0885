"""The planner: dedup, refresh, escalation, jitter, caps, CIDR overlaps and batching, on a fake clock."""

from __future__ import annotations

import contextlib
import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.firewall.errors import TargetError
from services.firewall.model import Element
from services.firewall.planner import Planner, Policy
from services.firewall.targets import AllowList

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def make(**kw: float) -> tuple[Planner, Clock]:
    clock = Clock()
    policy = Policy(**{"jitter_fraction": 0.0, **kw})  # type: ignore[arg-type]
    return Planner(policy, AllowList([net("198.19.255.0/24")]), clock, random.Random(7)), clock


def commit(p: Planner) -> list[str]:
    ops = p.take()
    p.committed(ops)
    return [f"{op.kind} {op.net}" for op in ops]


def test_first_request_queues_one_add_with_the_default_timeout() -> None:
    p, _ = make()
    assert p.block("198.18.0.1", captured_ns=5) == "queued"
    (op,) = p.take()
    assert (op.kind, op.timeout_ms, op.offences, op.replace, op.captured_ns) == (
        "add",
        3_600_000,
        1,
        False,
        5,
    )


def test_repeats_are_deduplicated_then_refresh_after_refresh_min() -> None:
    p, clock = make(refresh_min_s=60)
    p.block("198.18.0.1")
    assert p.block("198.18.0.1") == "deduplicated"  # still pending
    commit(p)
    clock.t += 30
    assert p.block("198.18.0.1") == "deduplicated"  # too soon to re-arm
    assert not p.pending
    clock.t += 31
    assert p.block("198.18.0.1") == "refreshed"
    (op,) = p.take()
    assert op.replace and op.timeout_ms == 3_600_000 and op.offences == 1
    p.committed([op])
    assert p.bans[net("198.18.0.1/32")].expires_at == pytest.approx(clock.t + 3600)


def test_repeat_offenders_escalate_up_to_the_cap() -> None:
    p, clock = make(timeout_s=10, escalation_factor=3, max_timeout_s=50, offence_memory_s=1000)
    timeouts = []
    for _ in range(4):
        p.block("198.18.0.1")
        (op,) = p.take()
        p.committed([op])
        timeouts.append((op.timeout_ms, op.offences))
        clock.t += op.timeout_ms / 1000 + 1
        assert [b.net for b in p.expire()] == [net("198.18.0.1/32")]
    assert timeouts == [(10_000, 1), (30_000, 2), (50_000, 3), (50_000, 4)]


def test_offences_are_forgotten_after_the_memory_window() -> None:
    p, clock = make(timeout_s=10, offence_memory_s=100)
    p.block("198.18.0.1")
    commit(p)
    clock.t += 11
    p.expire()
    clock.t += 101
    p.block("198.18.0.1")
    assert p.take()[0].offences == 1


def test_jitter_spreads_timeouts_within_the_fraction() -> None:
    clock = Clock()
    p = Planner(Policy(jitter_fraction=0.1), AllowList(), clock, random.Random(1))
    for i in range(200):
        p.block(f"198.18.1.{i}")
    values = [op.timeout_ms for op in p.take()]
    assert all(3_240_000 <= v <= 3_960_000 for v in values)
    assert len(set(values)) > 150  # bans do not expire together


def test_cap_refuses_new_bans_but_not_repeats() -> None:
    p, _ = make(max_elements_v4=3)
    for i in range(3):
        p.block(f"198.18.0.{i}")
    with pytest.raises(TargetError) as exc:
        p.block("198.18.0.200")
    assert exc.value.reason == "over_capacity"
    assert p.block("198.18.0.1") == "deduplicated"
    assert p.block("2001:db8::1") == "queued"  # the other family has its own cap
    commit(p)
    with pytest.raises(TargetError):
        p.block("198.18.0.201")


def test_allow_listed_and_invalid_are_refused() -> None:
    p, _ = make()
    for text, reason in (
        ("198.19.255.5", "allow_listed"),
        ("127.0.0.1", "allow_listed"),
        ("nope", "invalid"),
    ):
        with pytest.raises(TargetError) as exc:
            p.block(text)
        assert exc.value.reason == reason
    assert not p.pending


def test_new_allow_list_removes_covered_bans() -> None:
    p, _ = make()
    p.block("198.18.0.1")
    p.block("198.18.0.2")
    commit(p)
    p.block("198.18.0.3")  # pending only
    removed = p.set_allow(AllowList([net("198.18.0.0/30")]))
    assert removed == [net("198.18.0.1/32"), net("198.18.0.2/32")]
    assert commit(p) == ["delete 198.18.0.1/32", "delete 198.18.0.2/32"]
    assert set(p.bans) == set()
    with pytest.raises(TargetError):
        p.block("198.18.0.3")


def test_prefix_covered_by_a_wider_ban_is_not_added() -> None:
    p, _ = make()
    p.block("198.18.0.0/16")
    commit(p)
    assert p.block("198.18.4.0/24") == "covered"
    assert not p.pending


def test_wider_prefix_replaces_narrower_ones_and_keeps_the_longest_time() -> None:
    p, clock = make(timeout_s=100)
    p.block("198.18.4.0/24")
    commit(p)
    clock.t += 10
    p.block("198.18.5.0/24")  # pending, never committed
    p.set_policy(Policy(timeout_s=50, jitter_fraction=0.0))
    p.block("198.18.0.0/16")
    ops = p.take()
    assert [(o.kind, str(o.net)) for o in ops] == [("delete", "198.18.4.0/24"), ("add", "198.18.0.0/16")]
    assert ops[1].timeout_ms == 90_000  # the narrower ban had 90 s left
    p.committed(ops)
    assert set(p.bans) == {net("198.18.0.0/16")}


def test_batches_close_by_size_or_interval() -> None:
    p, clock = make(batch_size=3, batch_interval_s=0.005)
    p.block("198.18.0.1")
    assert not p.due()
    clock.t += 0.006
    assert p.due()
    p.block("198.18.0.2")
    p.block("198.18.0.3")
    p.block("198.18.0.4")
    assert len(p.take()) == 3
    assert len(p.take()) == 1
    assert p.next_deadline() is None


def test_failed_batch_leaves_the_view_unchanged() -> None:
    p, _ = make(max_elements_v4=1)
    p.block("198.18.0.1/32")
    p.failed(p.take())
    assert not p.bans
    assert p.block("198.18.0.1") == "queued"  # capacity was given back


def test_load_takes_remaining_time_and_offences_from_the_kernel() -> None:
    p, clock = make(refresh_min_s=0)
    p.load(
        [
            Element(net("198.18.0.1/32"), 3_600_000, 1_000_000, 3),
            Element(net("2001:db8::/64"), 60_000, 5_000, 1),
        ]
    )
    assert p.bans[net("198.18.0.1/32")].expires_at == pytest.approx(clock.t + 1000)
    assert p.counts()[("v6", "cidr")] == 1
    clock.t += 6
    assert [b.net for b in p.expire()] == [net("2001:db8::/64")]
    clock.t += 2000
    p.expire()
    p.block("198.18.0.1")
    assert p.take()[0].offences == 4


def test_operator_unblock_of_a_pending_add_just_drops_it() -> None:
    p, _ = make()
    p.block("198.18.0.1")
    assert p.unblock(net("198.18.0.1/32"))
    assert not p.pending
    assert not p.unblock(net("198.18.0.2/32"))  # unknown: still queued as a delete (kernel may hold it)
    assert [o.kind for o in p.take()] == ["delete"]


targets = st.one_of(
    st.integers(0, 63).map(lambda i: f"198.18.{i // 8}.{i}"),
    st.sampled_from(
        [
            "198.18.0.0/24",
            "198.18.0.0/16",
            "198.18.1.0/24",
            "198.19.0.0/20",
            "198.19.255.0/24",
            "127.0.0.1",
            "x",
        ]
    ),
    st.integers(0, 15).map(lambda i: f"2001:db8::{i:x}"),
)
actions = st.lists(
    st.tuples(st.sampled_from(["block", "commit", "fail", "tick", "unblock"]), targets), max_size=60
)


@settings(max_examples=150, deadline=None)
@given(actions)
def test_invariants_hold_for_any_sequence(seq: list[tuple[str, str]]) -> None:
    """Counts match the view, caps hold, and the interval sets never hold overlapping prefixes."""
    p, clock = make(timeout_s=5, max_elements_v4=20, max_elements_v6=5, batch_size=7)
    for action, target in seq:
        if action == "block":
            with contextlib.suppress(TargetError):
                p.block(target)
        elif action == "commit":
            commit(p)
        elif action == "fail":
            p.failed(p.take())
        elif action == "tick":
            clock.t += 2
            p.expire()
        elif action == "unblock" and target != "x":
            p.unblock(ipaddress.ip_network(target))
        for fam, cap in (("v4", 20), ("v6", 5)):
            assert p._nbans[fam] + p._pending_new[fam] <= cap
            assert p._nbans[fam] == sum(1 for n in p.bans if (n.version == 4) == (fam == "v4"))
            assert p._pending_new[fam] >= 0
        assert sum(p.counts().values()) == len(p.bans)
    while p.pending:
        commit(p)
    prefixes = [n for n in p.bans if n.prefixlen < n.max_prefixlen]
    for a in prefixes:
        for b in prefixes:
            assert a == b or not a.overlaps(b), (a, b)


def test_a_request_after_expiry_escalates_even_before_the_expiry_sweep() -> None:
    p, clock = make(timeout_s=10, escalation_factor=2)
    p.block("198.18.0.1")
    commit(p)
    clock.t += 11  # expired in the kernel; expire() not called yet
    assert p.block("198.18.0.1") == "queued"
    (op,) = p.take()
    assert (op.offences, op.timeout_ms, op.replace) == (2, 20_000, True)


def test_elements_without_timeout_are_kept_and_never_re_armed() -> None:
    p, clock = make(refresh_min_s=0)
    p.load([Element(net("198.18.0.9/32"), 0, 0, 1)])  # added by hand: `nft add element ... { x }`
    clock.t += 10**6
    assert p.expire() == []
    assert p.block("198.18.0.9") == "deduplicated"
