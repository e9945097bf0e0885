"""Backend rendering and parsing without a kernel: nft text, nft JSON listings, the dry-run journal."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from services.firewall.backends import BACKENDS, open_backend
from services.firewall.backends.dry_run import DryRunBackend
from services.firewall.backends.nftables import parse_listing, render_ops, render_setup
from services.firewall.config import FirewallSettings
from services.firewall.errors import BackendUnavailable
from services.firewall.model import Op

pytestmark = pytest.mark.unit


def n(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_registry_names_match_the_settings() -> None:
    assert set(BACKENDS) == {"nftables", "ipset", "dry_run"}


def test_unknown_backend_is_a_config_error() -> None:
    s = FirewallSettings.model_construct(backend="pf")  # type: ignore[arg-type]  # bypasses validation on purpose
    with pytest.raises(BackendUnavailable, match="unknown backend 'pf'"):
        open_backend(s)


def test_setup_creates_and_never_flushes_sets() -> None:
    text = render_setup("t1", -5)
    assert "add set inet t1 ban_v4 { type ipv4_addr; flags timeout; }" in text
    assert "add set inet t1 ban_v6_net { type ipv6_addr; flags interval, timeout; }" in text
    assert "flush set" not in text and "delete" not in text
    assert text.count("flush chain") == 2  # only our own chains are rewritten (atomically)
    assert "ip6 saddr @ban_v6_net counter drop" in text


def test_one_batch_is_one_transaction_with_refresh_by_delete_and_add() -> None:
    ops = [
        Op("add", n("198.18.0.1/32"), 1000, 2),
        Op("add", n("198.18.0.2/32"), 2000, 1, replace=True),
        Op("add", n("2001:db8::/64"), 3000, 1),
        Op("delete", n("198.18.0.3/32")),
    ]
    (tx,) = render_ops("t1", ops)
    lines = tx.strip().splitlines()
    assert lines == [
        "add element inet t1 ban_v4 { 198.18.0.2, 198.18.0.3 }",
        "delete element inet t1 ban_v4 { 198.18.0.2, 198.18.0.3 }",
        'add element inet t1 ban_v4 { 198.18.0.1 timeout 1000ms comment "mld o=2", '
        '198.18.0.2 timeout 2000ms comment "mld o=1" }',
        'add element inet t1 ban_v6_net { 2001:db8::/64 timeout 3000ms comment "mld o=1" }',
    ]


def test_replacing_prefixes_takes_two_transactions_removals_first() -> None:
    ops = [Op("delete", n("198.18.4.0/24"), reason="superseded"), Op("add", n("198.18.0.0/16"), 1000)]
    first, second = render_ops("t1", ops)
    assert "delete element inet t1 ban_v4_net { 198.18.4.0/24 }" in first
    assert "198.18.0.0/16" in second and "delete" not in second


LISTING = {
    "nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "t1"}},
        {
            "set": {
                "name": "ban_v4",
                "elem": [
                    {"elem": {"val": "198.18.0.5", "timeout": 3600, "expires": 3590, "comment": "mld o=3"}},
                    {"elem": {"val": "198.18.0.6", "timeout": 60, "expires": 1}},
                ],
            }
        },
        {
            "set": {
                "name": "ban_v6_net",
                "elem": [
                    {
                        "elem": {
                            "val": {"prefix": {"addr": "2001:db8::", "len": 64}},
                            "timeout": 10,
                            "expires": 9,
                        }
                    }
                ],
            }
        },
        {"set": {"name": "ban_v4_net"}},
        {"set": {"name": "someone_elses", "elem": ["10.0.0.1"]}},
    ]
}


def test_listing_is_parsed_with_remaining_time_and_offences() -> None:
    els = parse_listing(json.dumps(LISTING))
    got = {(str(e.net), e.timeout_ms, e.expires_ms, e.offences) for e in els}
    assert got == {
        ("198.18.0.5/32", 3_600_000, 3_590_000, 3),
        ("198.18.0.6/32", 60_000, 1_000, 1),
        ("2001:db8::/64", 10_000, 9_000, 1),
    }


def test_dry_run_journal_is_its_state(tmp_path: Path) -> None:
    journal = tmp_path / "sub" / "fw.jsonl"
    b = DryRunBackend(journal)
    b.setup()
    b.apply([Op("add", n("198.18.0.1/32"), 60_000, 2), Op("add", n("198.18.0.2/32"), 60_000)])
    b.apply([Op("delete", n("198.18.0.2/32"), reason="operator")])
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert lines[0]["ops"][0] == {
        "op": "add",
        "target": "198.18.0.1",
        "timeout_ms": 60000,
        "offences": 2,
        "replace": False,
    }
    (el,) = DryRunBackend(journal).read()  # a restart sees what a kernel would hold
    assert (str(el.net), el.offences) == ("198.18.0.1/32", 2) and 0 < el.expires_ms <= 60_000
    assert b.flush() == 1
    assert b.read() == []


def test_dry_run_skips_corrupt_journal_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = tmp_path / "fw.jsonl"
    b = DryRunBackend(journal)
    b.apply([Op("add", n("198.18.0.1/32"), 60_000)])
    with journal.open("a") as fh:
        fh.write("{not json\n")
    assert len(b.read()) == 1
    assert "journal line skipped" in caplog.text
