"""Regenerate tests/rag/questions.yaml from the seeded corpus (review the diff before committing).

Expected ids come from the generator's ground truth with predicates written here independently of
the query parser and SQL: filter questions list every event that meets the condition; semantic
questions list every event of the scenario(s) they describe. Run:
    .venv/bin/python tests/rag/make_questions.py
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from libs.common.events import event_to_dict
from services.rag.corpus import CorpusGenerator

SEED, EVENTS, DAYS = 11, 1000, 3.0
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NOW_NS = int(NOW.timestamp()) * 1_000_000_000
H = 3600 * 10**9
DAY0 = int(datetime(2026, 3, 10, tzinfo=UTC).timestamp()) * 10**9  # today 00:00
Doc = dict[str, Any]


def ts(d: Doc) -> int:
    dt = datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00"))
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def day(s: str) -> int:
    return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()) * 10**9


def port(d: Doc, *ports: int) -> bool:
    return d["dst_port"] in ports or d["src_port"] in ports


def in_net(addr: str, cidr: str) -> bool:
    a = ipaddress.ip_address(addr)
    n = ipaddress.ip_network(cidr)
    return a.version == n.version and a in n


def build(docs: list[Doc], scen: dict[str, str]) -> list[dict[str, Any]]:
    attacker = max(
        {d["src_ip"] for d in docs if d["attack_type"] == "port_scan"},
        key=lambda a: sum(d["src_ip"] == a for d in docs),
    )
    filt: list[tuple[str, Callable[[Doc], bool]]] = [
        (
            "Show me high divergence events from yesterday",
            lambda d: d["divergence"] > 0.3 and DAY0 - 24 * H <= ts(d) < DAY0,
        ),
        (
            "Fast detector triggered but ML disagreed",
            lambda d: d["fast_score"] >= 0.5 and d["ml_score"] < 0.5,
        ),
        (
            "ML flagged it but the fast detector did not fire",
            lambda d: d["ml_score"] >= 0.5 and d["fast_score"] < 0.5,
        ),
        (
            "blocked port scans in the last 6 hours",
            lambda d: d["decision"] == "DROP" and d["attack_type"] == "port_scan" and ts(d) >= NOW_NS - 6 * H,
        ),
        ("consensus events today", lambda d: d["classification"] == "CONSENSUS" and ts(d) >= DAY0),
        (f"everything from {attacker}", lambda d: d["src_ip"] == attacker),
        ("traffic to 198.18.0.5 on port 22", lambda d: d["dst_ip"] == "198.18.0.5" and port(d, 22)),
        ("ssh brute force", lambda d: d["attack_type"] == "brute_force" and port(d, 22)),
        ("ransomware over smb", lambda d: d["attack_type"] == "ransomware" and port(d, 445, 139)),
        ("udp events on port 53", lambda d: d["protocol"] == "udp" and port(d, 53)),
        (
            "icmp sweeps yesterday",
            lambda d: (
                d["attack_type"] == "icmp_sweep" and d["protocol"] == "icmp" and DAY0 - 24 * H <= ts(d) < DAY0
            ),
        ),
        ("events with score above 0.95", lambda d: d["final_score"] >= 0.95),
        (
            "allowed events in the last 24 hours",
            lambda d: d["decision"] == "ALLOW" and ts(d) >= NOW_NS - 24 * H,
        ),
        (
            "DDoS floods against 198.18.0.6",
            lambda d: d["attack_type"] == "ddos" and d["dst_ip"] == "198.18.0.6",
        ),
        ("events involving 2001:db8:1::10", lambda d: "2001:db8:1::10" in (d["src_ip"], d["dst_ip"])),
        (
            "high divergence events on 2026-03-08",
            lambda d: d["divergence"] > 0.3 and day("2026-03-08") <= ts(d) < day("2026-03-09"),
        ),
        (
            "critical events from the last 2 hours",
            lambda d: d["final_score"] >= 0.85 and ts(d) >= NOW_NS - 2 * H,
        ),
        (
            "port scans from 198.19.0.0/16 since 2026-03-09",
            lambda d: (
                d["attack_type"] == "port_scan"
                and in_net(d["src_ip"], "198.19.0.0/16")
                and ts(d) >= day("2026-03-09")
            ),
        ),
        (
            "tcp port 445 consensus",
            lambda d: d["protocol"] == "tcp" and port(d, 445) and d["classification"] == "CONSENSUS",
        ),
        (
            "blocked events between 2026-03-08 and 2026-03-09",
            lambda d: d["decision"] == "DROP" and day("2026-03-08") <= ts(d) < day("2026-03-10"),
        ),
        ("events on port 8443", lambda d: port(d, 8443)),
        ("benign traffic yesterday", lambda d: d["verdict"] == "BENIGN" and DAY0 - 24 * H <= ts(d) < DAY0),
        (
            "Fast detector fired but ML disagreed in the last 12 hours",
            lambda d: d["fast_score"] >= 0.5 and d["ml_score"] < 0.5 and ts(d) >= NOW_NS - 12 * H,
        ),
        (
            "most recent blocked ransomware",
            lambda d: d["decision"] == "DROP" and d["attack_type"] == "ransomware",
        ),
    ]
    sem: list[tuple[str, set[str]]] = [
        ("Find botnet-like behavior", {"botnet_beacon"}),
        ("periodic beaconing to a command and control server", {"botnet_beacon"}),
        ("data exfiltration to the outside", {"exfiltration"}),
        ("huge uploads to an external host", {"exfiltration"}),
        ("repeated failed logins", {"ssh_brute_force"}),
        ("probes answered with resets", {"port_scan"}),
        ("false alarms from a monitoring host", {"fast_false_positive"}),
        ("encrypting files on network shares", {"smb_ransomware"}),
        ("ordinary allowed web browsing", {"benign_web"}),
        ("SYN packets at a very high rate", {"syn_flood"}),
    ]
    out: list[dict[str, Any]] = []
    for q, pred in filt:
        ids = [d["event_id"] for d in docs if pred(d)]
        assert ids, f"no event for {q!r}: change the question or the seed"
        out.append({"question": q, "kind": "filter", "relevant": ids})
    for q, scenarios in sem:
        ids = [d["event_id"] for d in docs if scen[d["event_id"]] in scenarios]
        out.append({"question": q, "kind": "semantic", "scenarios": sorted(scenarios), "relevant": ids})
    return out


def main() -> None:
    gen = CorpusGenerator(SEED, NOW_NS, DAYS).generate(EVENTS)
    docs = [event_to_dict(g.event) for g in gen]
    scen = {g.event.event_id: g.scenario for g in gen}
    doc = {
        "corpus": {
            "seed": SEED,
            "events": EVENTS,
            "days": DAYS,
            "now": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "first_event_id": docs[0]["event_id"],
            "last_event_id": docs[-1]["event_id"],
        },
        "targets": {"filter_precision_at_10": 0.9},
        "questions": build(docs, scen),
    }
    path = Path(__file__).with_name("questions.yaml")
    header = "# Generated by tests/rag/make_questions.py from the seeded corpus; `relevant` = ids that must come first.\n"
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=200))
    print(f"{path}: {len(doc['questions'])} questions")


if __name__ == "__main__":
    main()
