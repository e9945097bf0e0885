"""The Firewall core (planner + backend + metrics) with an in-memory backend: no kernel, no socket."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from libs.common.events import ip_bytes
from ml_defender.v1 import detection_pb2
from services.firewall.app import Firewall, build_allow_list
from services.firewall.config import HOT_FIELDS, RESTART_FIELDS, FirewallSettings
from services.firewall.errors import BackendError
from services.firewall.model import Element, Op
from services.firewall.targets import AllowList

pytestmark = pytest.mark.unit


class MemoryBackend:
    """A fake kernel: fails transactions that contain a poisoned target."""

    name = "memory"

    def __init__(self, elements: Sequence[Element] = (), poison: str = "") -> None:
        self.elements = list(elements)
        self.poison = poison
        self.transactions: list[list[Op]] = []
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def read(self) -> list[Element]:
        return list(self.elements)

    def apply(self, ops: Sequence[Op]) -> None:
        if any(str(op.net.network_address) == self.poison for op in ops):
            raise BackendError("poisoned", "memory")
        self.transactions.append(list(ops))

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        pass


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def event(
    src: str, decision: int = detection_pb2.DECISION_DROP, captured_ns: int = 0
) -> detection_pb2.DetectionEvent:
    ev = detection_pb2.DetectionEvent(event_id="e1", decision=decision)
    ev.flow.key.src_addr = ip_bytes(src)
    ev.timestamps.captured_ns = captured_ns
    return ev


def firewall(backend: MemoryBackend, **kw: object) -> Firewall:
    s = FirewallSettings(backend="dry_run", **kw)
    return Firewall(s, backend, AllowList([ipaddress.ip_network("198.18.200.1/32")]))


def test_drop_events_become_one_transaction_and_latency_is_observed() -> None:
    b = MemoryBackend()
    fw = firewall(b, batch_interval_ms=0)
    fw.start()
    before = metric("mld_firewall_block_latency_seconds_count")
    assert fw.handle_event(event("198.18.0.1", captured_ns=time.time_ns() - 50_000_000)) == "queued"
    assert fw.handle_event(event("198.18.0.2")) == "queued"
    assert fw.handle_event(event("198.18.0.1")) == "deduplicated"
    assert fw.handle_event(event("198.18.0.3", detection_pb2.DECISION_ALERT)) is None
    assert fw.handle_event(event("198.18.200.1")) == "allow_listed"
    assert fw.handle_event(event("198.18.0.4", decision=99)) is None  # unknown decision: counted, ignored
    fw.poll()
    assert [[str(o.net) for o in t] for t in b.transactions] == [["198.18.0.1/32", "198.18.0.2/32"]]
    assert metric("mld_firewall_block_latency_seconds_count") == before + 1
    assert metric("mld_firewall_banned_addresses", family="v4", kind="host") >= 0


def test_event_addresses_are_resolved_from_their_bytes_and_cached_only_when_allowed() -> None:
    """The hot path keys on the event's raw address: an IPv4-mapped IPv6 source is the same ban,
    allow-listed sources are refused every time (never cached), and a reload drops the cache."""
    b = MemoryBackend()
    fw = firewall(b, batch_interval_ms=0)
    fw.start()
    mapped = event("198.18.0.1")
    mapped.flow.key.src_addr = ipaddress.IPv6Address("::ffff:198.18.0.1").packed
    assert fw.handle_event(event("198.18.0.1")) == "queued"
    assert fw.handle_event(mapped) == "deduplicated"
    fw.poll()
    assert fw.handle_event(mapped) == "deduplicated"  # banned now, young: no kernel write
    for _ in range(3):
        assert fw.handle_event(event("198.18.200.1")) == "allow_listed"
    assert fw.handle_event(event("::")) == "invalid"
    assert fw.handle_event(event("2001:db8::5")) == "queued"
    fw.poll()
    fw.apply_settings(fw.settings, AllowList([ipaddress.ip_network("2001:db8::/64")]))
    assert fw.handle_event(event("2001:db8::5")) == "allow_listed"  # cached before the reload
    fw.poll()
    assert [[str(o.net) for o in t] for t in b.transactions] == [
        ["198.18.0.1/32"],
        ["2001:db8::5/128"],
        ["2001:db8::5/128"],  # the delete of the now allow-listed ban
    ]
    assert b.transactions[-1][0].kind == "delete"


def test_rejections_are_counted_by_reason() -> None:
    fw = firewall(MemoryBackend(), max_elements_v4=1)
    fw.start()
    base = {
        r: metric("mld_firewall_rejected_requests_total", reason=r)
        for r in ("invalid", "allow_listed", "over_capacity")
    }
    fw.request("198.18.0.1")
    assert fw.request("198.18.0.2") == "over_capacity"
    assert fw.request("not-an-ip") == "invalid"
    assert fw.request("::1") == "allow_listed"
    bad = event("198.18.0.9")
    bad.flow.key.src_addr = b"\x01\x02"
    assert fw.handle_event(bad) == "invalid"
    for reason, extra in (("invalid", 2), ("allow_listed", 1), ("over_capacity", 1)):
        assert metric("mld_firewall_rejected_requests_total", reason=reason) == base[reason] + extra


def test_a_refused_transaction_is_retried_op_by_op_and_only_the_bad_op_is_lost() -> None:
    b = MemoryBackend(poison="198.18.0.2")
    fw = firewall(b)
    fw.start()
    failed_before = metric("mld_firewall_failed_operations_total", op="add")
    for i in (1, 2, 3):
        fw.request(f"198.18.0.{i}")
    fw.drain()
    assert b.setups == 2  # re-created once in case the table vanished
    assert sorted(str(n) for n in fw.planner.bans) == ["198.18.0.1/32", "198.18.0.3/32"]
    assert metric("mld_firewall_failed_operations_total", op="add") == failed_before + 1


def test_a_table_deleted_under_the_service_is_recreated_and_its_lost_bans_forgotten() -> None:
    """Someone ran `nft delete table`: the retry re-creates it and re-reads the kernel, so the
    sources whose bans went with it are banned again by their next DROP instead of deduplicated."""

    class Vanishing(MemoryBackend):
        def apply(self, ops: Sequence[Op]) -> None:
            if self.setups == 1:  # the table is gone until setup() runs again
                raise BackendError("No such file or directory", "memory")
            super().apply(ops)

        def setup(self) -> None:
            super().setup()
            if self.setups > 1:
                self.elements = []

    old = Element(ipaddress.ip_network("198.18.0.1/32"), 600_000, 590_000)
    b = Vanishing([old])
    fw = firewall(b, batch_interval_ms=0)
    fw.start()
    assert fw.request("198.18.0.1") == "deduplicated"
    assert fw.request("198.18.0.2") == "queued"
    fw.poll()
    assert b.setups == 2 and [str(n) for n in fw.planner.bans] == ["198.18.0.2/32"]
    assert fw.request("198.18.0.1") == "queued"


def test_start_reconciles_and_removes_allow_listed_bans() -> None:
    net = ipaddress.ip_network
    b = MemoryBackend(
        [Element(net("198.18.0.7/32"), 60_000, 30_000, 2), Element(net("198.18.200.1/32"), 1, 1)]
    )
    fw = firewall(b)
    assert fw.start() == 2
    fw.drain()
    assert [(o.kind, str(o.net)) for t in b.transactions for o in t] == [("delete", "198.18.200.1/32")]
    assert set(fw.planner.bans) == {net("198.18.0.7/32")}


def test_hot_reload_of_the_allow_list_unbans() -> None:
    b = MemoryBackend()
    fw = firewall(b)
    fw.start()
    fw.request("198.18.0.5")
    fw.drain()
    new = fw.settings.model_copy(update={"timeout_s": 10.0})
    removed = fw.apply_settings(new, AllowList([ipaddress.ip_network("198.18.0.0/24")]))
    assert [str(x) for x in removed] == ["198.18.0.5/32"]
    assert fw.planner.policy.timeout_s == 10.0


def test_allow_list_includes_peers_cidrs_and_own_addresses() -> None:
    s = FirewallSettings(
        allow={"cidrs": ["198.18.50.0/24"], "peers": ["http://198.18.0.10:2379", "localhost"]}
    )
    allow = build_allow_list(s, own=lambda: [ipaddress.ip_network("198.18.60.1/32")])
    for text in ("198.18.50.9", "198.18.0.10", "198.18.60.1", "127.0.0.1"):
        assert allow.match(ipaddress.ip_network(text)) is not None, text
    assert allow.match(ipaddress.ip_network("198.18.0.11")) is None


def test_settings_split_hot_and_restart_fields() -> None:
    assert "allow" in HOT_FIELDS and "backend" in RESTART_FIELDS and "table" in RESTART_FIELDS
    assert set(HOT_FIELDS) | set(RESTART_FIELDS) == set(FirewallSettings.model_fields)
    with pytest.raises(ValueError):
        FirewallSettings(table="bad name")
    assert FirewallSettings().metrics.port == 9105
    assert FirewallSettings().input.endpoint == "tcp://127.0.0.1:5572"


def test_reload_refuses_restart_fields_and_keeps_the_last_good_settings() -> None:
    from libs.common.errors import ConfigError

    fw = firewall(MemoryBackend())
    fw.start()
    old = fw.settings
    with pytest.raises(ConfigError, match="need a restart: table"):
        fw.apply_settings(old.model_copy(update={"table": "other", "timeout_s": 5.0}))
    assert fw.settings is old and fw.planner.policy.timeout_s == old.timeout_s
