"""The question parser: time, score, address, port, protocol and attack words become filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.rag.query import Vocabulary, parse_question

NOW = int(datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()) * 10**9
H = 3600 * 10**9
DAY0 = int(datetime(2026, 3, 10, tzinfo=UTC).timestamp()) * 10**9
ATTACKS = {"port_scan", "ddos", "brute_force", "ransomware", "icmp_sweep"}


def parse(q: str, attacks: set[str] | None = ATTACKS):  # type: ignore[no-untyped-def]
    return parse_question(q, NOW, Vocabulary(), attacks)


@pytest.mark.unit
def test_the_three_issue_questions() -> None:
    p = parse("Show me high divergence events from yesterday")
    assert (p.filters.since_ns, p.filters.until_ns) == (DAY0 - 24 * H, DAY0)
    assert p.filters.min_divergence == 0.30 and p.semantic == ""
    p = parse("Fast detector triggered but ML disagreed")
    assert (p.filters.min_fast, p.filters.max_ml) == (0.5, 0.5) and p.semantic == ""
    p = parse("Find botnet-like behavior")
    assert p.filters.is_empty() and "botnet" in p.semantic


@pytest.mark.unit
@pytest.mark.parametrize(
    ("q", "since", "until"),
    [
        ("events in the last 2 hours", NOW - 2 * H, NOW + 1),
        ("past hour", NOW - H, NOW + 1),
        ("today", DAY0, NOW + 1),
        ("on 2026-03-08", DAY0 - 48 * H, DAY0 - 24 * H),
        ("between 2026-03-07 and 2026-03-08", DAY0 - 72 * H, DAY0 - 24 * H),
        ("last 3 days", NOW - 72 * H, NOW + 1),
    ],
)
def test_time_words(q: str, since: int, until: int) -> None:
    f = parse(q).filters
    assert (f.since_ns, f.until_ns) == (since, until)


@pytest.mark.unit
def test_addresses_ports_protocols() -> None:
    f = parse("tcp traffic from 198.19.4.7 to 2001:db8:1::5 on port 22 and 2222").filters
    assert f.src_nets == ["198.19.4.7"] and f.dst_nets == ["2001:db8:1::5"]
    assert f.ports == [22, 2222] and f.protocols == ["tcp"]
    f = parse("anything involving 198.18.0.0/16 over udp").filters
    assert f.any_nets == ["198.18.0.0/16"] and f.protocols == ["udp"]
    assert parse("ssh").filters.ports == [22]
    assert parse("version 1.2.3.4.5 of the tool").filters.any_nets == []  # not an address


@pytest.mark.unit
def test_score_and_decision_words() -> None:
    f = parse("blocked critical consensus events with ml score above 0.8").filters
    assert f.decisions == ["DROP"] and f.min_final == 0.85 and f.classifications == ["CONSENSUS"]
    assert f.min_ml == 0.8
    f = parse("ML flagged it but the fast detector did not fire").filters
    assert (f.min_ml, f.max_fast) == (0.5, 0.5)


@pytest.mark.unit
def test_attack_words_filter_only_known_types() -> None:
    p = parse("port scans and ransomware")
    assert p.filters.attack_types == ["port_scan", "ransomware"] and p.semantic == ""
    p = parse("port scans", attacks={"ddos"})  # the index holds no port_scan events: rank by meaning instead
    assert p.filters.attack_types == [] and "port scans" in p.semantic


@pytest.mark.unit
def test_ordering_and_limit() -> None:
    p = parse("top 5 most recent alerts")
    assert p.limit == 5 and p.order == "recent" and p.filters.decisions == ["ALERT"]
    assert parse("high divergence").order == "divergence"


@pytest.mark.unit
def test_vocabulary_comes_from_settings() -> None:
    p = parse_question(
        "high divergence and high severity", NOW, Vocabulary(high_divergence=0.5, high_score=0.9)
    )
    assert p.filters.min_divergence == 0.5 and p.filters.min_final == 0.9
