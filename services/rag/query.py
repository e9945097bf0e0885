"""Plain-language questions → structured filters + the words left for semantic ranking (pure).

"Show me high divergence events from yesterday" becomes {divergence > 0.30, yesterday 00:00-24:00
UTC} with nothing left to rank semantically; "Find botnet-like behavior" has no filter words and is
ranked by meaning. Every matched phrase is removed from the text, so the remainder is what the
filters did not capture. Time words are relative to an injected `now` (tests and replays).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.rag.filters import Filters

NS = 1_000_000_000
UNITS = {"minute": 60, "min": 60, "hour": 3600, "hr": 3600, "day": 86400, "week": 7 * 86400}
SERVICE_PORTS: dict[str, list[int]] = {
    "ssh": [22],
    "smb": [445, 139],
    "rdp": [3389],
    "dns": [53],
    "telnet": [23],
    "ftp": [21],
    "snmp": [161],
    "http": [80],
    "https": [443],
    "smtp": [25],
}
ATTACK_ALIASES: list[tuple[str, str]] = [
    (r"port[\s-]*scan\w*|\bscan(?:s|ning|ner|ners)?\b|nmap|reconnaissance|\brecon\b|probing", "port_scan"),
    (r"d?dos\b|syn[\s-]*flood\w*|\bflood\w*|denial[\s-]+of[\s-]+service", "ddos"),
    (
        r"brute[\s-]*forc\w*|password[\s-]+guess\w*|credential[\s-]+stuffing|login[\s-]+attempts?",
        "brute_force",
    ),
    (r"ransomware", "ransomware"),
    (r"(?:ping|icmp)[\s-]+sweep\w*|\bsweeps?\b", "icmp_sweep"),
    (r"lateral[\s-]+movement", "lateral_movement"),
]
STOPWORDS = set(
    [
        "a",
        "an",
        "the",
        "me",
        "us",
        "show",
        "find",
        "list",
        "give",
        "get",
        "display",
        "what",
        "which",
        "who",
        "where",
        "when",
        "were",
        "was",
        "is",
        "are",
        "be",
        "been",
        "that",
        "this",
        "those",
        "these",
        "there",
        "with",
        "from",
        "to",
        "for",
        "of",
        "in",
        "on",
        "at",
        "by",
        "and",
        "or",
        "all",
        "any",
        "some",
        "every",
        "events",
        "event",
        "flows",
        "flow",
        "connections",
        "connection",
        "traffic",
        "please",
        "i",
        "we",
        "want",
        "see",
        "see",
        "tell",
        "about",
        "related",
        "like",
        "ones",
        "one",
        "happened",
        "happening",
        "occurred",
        "detected",
        "seen",
        "logged",
        "recorded",
        "have",
        "has",
        "had",
        "do",
        "did",
        "over",
        "via",
        "using",
        "during",
        "within",
        "between",
        "across",
        "any",
        "anything",
        "something",
        "against",
    ]
)
_DATE = r"(\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?)"
_IPV4 = r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?(?![\d.])"
_IPV6 = r"(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?:/\d{1,3})?(?![\w:])"


@dataclass(frozen=True)
class Vocabulary:
    """The numbers behind score words (from QuerySettings)."""

    high_divergence: float = 0.30
    high_score: float = 0.85
    fast_fired: float = 0.5
    ml_disagree: float = 0.5


@dataclass
class ParsedQuery:
    filters: Filters = field(default_factory=Filters)
    semantic: str = ""
    order: str = "severity"
    limit: int | None = None
    matched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "filters": self.filters.to_dict(),
            "semantic": self.semantic,
            "order": self.order,
            "limit": self.limit,
            "matched": self.matched,
        }


def _day_start(dt: datetime) -> datetime:
    return dt.replace(hour=0, minute=0, second=0, microsecond=0)


def _ns(dt: datetime) -> int:
    return int(dt.timestamp()) * NS + dt.microsecond * 1000


def _date(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace(" ", "T"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


class _Scanner:
    """Finds phrases in the question and blanks them out so the remainder is what is left."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.matched: list[str] = []

    def take(self, pattern: str, fn: Callable[[re.Match[str]], bool | None]) -> None:
        """Apply fn to each match; blank the match unless fn returns False."""
        out, last = [], 0
        for m in re.finditer(pattern, self.text, flags=re.IGNORECASE):
            keep = fn(m)
            out.append(self.text[last : m.start()])
            if keep is False:
                out.append(m.group(0))
            else:
                out.append(" " * len(m.group(0)))
                self.matched.append(m.group(0).strip())
            last = m.end()
        out.append(self.text[last:])
        self.text = "".join(out)


def parse_question(
    question: str, now_ns: int, vocab: Vocabulary | None = None, attack_types: Iterable[str] | None = None
) -> ParsedQuery:
    """Turn a question into filters and a semantic remainder; `attack_types` are those the index holds."""
    v = vocab or Vocabulary()
    known_attacks = set(attack_types) if attack_types is not None else {a for _p, a in ATTACK_ALIASES}
    now = datetime.fromtimestamp(now_ns / NS, tz=UTC)
    pq = ParsedQuery()
    f = pq.filters
    s = _Scanner(" " + question.strip() + " ")

    # --- time ------------------------------------------------------------------------------
    def between(m: re.Match[str]) -> None:
        f.since_ns, f.until_ns = (
            _ns(_date(m.group(1))),
            _ns(_date(m.group(2)) + (timedelta(days=1) if len(m.group(2)) == 10 else timedelta())),
        )

    s.take(rf"\bbetween\s+{_DATE}\s+and\s+{_DATE}", between)
    s.take(rf"\b(?:since|after|from)\s+{_DATE}", lambda m: setattr(f, "since_ns", _ns(_date(m.group(1)))))
    s.take(rf"\b(?:before|until)\s+{_DATE}", lambda m: setattr(f, "until_ns", _ns(_date(m.group(1)))))

    def on_day(m: re.Match[str]) -> None:
        d = _date(m.group(1))
        f.since_ns = _ns(d)
        f.until_ns = _ns(d + (timedelta(days=1) if len(m.group(1)) == 10 else timedelta(minutes=1)))

    s.take(rf"\b(?:on\s+)?{_DATE}", on_day)

    def last_n(m: re.Match[str]) -> None:
        n = int(m.group(1) or 1)
        f.since_ns, f.until_ns = now_ns - n * UNITS[m.group(2).lower()] * NS, now_ns + 1

    s.take(
        r"\b(?:in\s+the\s+|during\s+the\s+|over\s+the\s+|within\s+the\s+)?(?:last|past)\s+(\d+)?\s*(minute|min|hour|hr|day|week)s?\b",
        last_n,
    )
    s.take(r"\btoday\b", lambda m: _set_range(f, _ns(_day_start(now)), now_ns + 1))
    s.take(
        r"\byesterday\b",
        lambda m: _set_range(f, _ns(_day_start(now) - timedelta(days=1)), _ns(_day_start(now))),
    )
    s.take(
        r"\bthis\s+week\b",
        lambda m: _set_range(f, _ns(_day_start(now) - timedelta(days=now.weekday())), now_ns + 1),
    )
    s.take(
        r"\b(\d+)\s*(minute|hour|day)s?\s+ago\b",
        lambda m: _set_range(
            f,
            now_ns - (int(m.group(1)) + 1) * UNITS[m.group(2).lower()] * NS,
            now_ns - (int(m.group(1)) - 1) * UNITS[m.group(2).lower()] * NS,
        ),
    )

    # --- detector agreement ------------------------------------------------------------------
    def fast_not_ml(_m: re.Match[str]) -> None:
        f.min_fast, f.max_ml = v.fast_fired, v.ml_disagree

    def ml_not_fast(_m: re.Match[str]) -> None:
        f.min_ml, f.max_fast = v.ml_disagree, v.fast_fired

    trig = r"(?:triggered|fired|flagged|alerted|detected|raised|caught)"
    dis = r"(?:disagreed|disagrees|disagree|did\s*n[o']t|didn't|said\s+benign|was\s+low|low|missed|silent|quiet)"
    s.take(
        rf"\bfast(?:\s+detector)?\s+{trig}\b.*?\b(?:but|while|and|yet)\b.*?\b(?:ml|models?|lightgbm)\b\s*(?:\w+\s+)?{dis}\b(?:\s+agree|\s+fire|\s+flag)?",
        fast_not_ml,
    )
    s.take(r"\bfalse\s+positives?\s+(?:of|from)\s+the\s+fast(?:\s+detector)?\b", fast_not_ml)
    s.take(
        rf"\b(?:ml|models?|lightgbm)\s+{trig}\b.*?\b(?:but|while|and|yet)\b.*?\bfast(?:\s+detector)?\s*(?:\w+\s+)?{dis}\b(?:\s+fire|\s+trigger)?",
        ml_not_fast,
    )
    s.take(r"\bonly\s+(?:the\s+)?fast(?:\s+detector)?\b|\bfast[\s-]+only\b", fast_not_ml)
    s.take(r"\bonly\s+(?:the\s+)?(?:ml|models?)\b|\bml[\s-]+only\b", ml_not_fast)
    s.take(
        r"\b(?:high(?:ly)?\s+|large\s+|big\s+|strong\s+)?diverg\w*\b|\bdetectors?\s+disagree\w*\b|\bdisagreement\b",
        lambda m: setattr(f, "min_divergence", v.high_divergence),
    )
    s.take(
        r"\bconsensus\b|\b(?:both\s+)?detectors?\s+agree[sd]?\b|\bboth\s+agree[sd]?\b",
        lambda m: _add(f.classifications, "CONSENSUS"),
    )

    # --- scores ----------------------------------------------------------------------------
    def score_cmp(m: re.Match[str]) -> None:
        which = (m.group(1) or "final").lower().strip()
        value = float(m.group(3))
        low = m.group(2).lower().strip() in ("below", "under", "<", "less than", "lower than", "<=")
        name = {"ml": "ml", "fast": "fast"}.get(which, "final")
        setattr(f, f"{'max' if low else 'min'}_{name}", value)

    s.take(
        r"\b(final|ml|fast)?\s*scores?\s*(above|over|>=|>|greater\s+than|at\s+least|below|under|<=|<|less\s+than|lower\s+than)\s*(0?\.\d+|1(?:\.0+)?|0)\b",
        score_cmp,
    )
    s.take(
        r"\b(?:high(?:est)?[\s-]+(?:score|severity|confidence|risk)s?|critical|most\s+severe|severe)\b",
        lambda m: setattr(f, "min_final", v.high_score),
    )
    s.take(r"\blow[\s-]+(?:score|severity|confidence|risk)s?\b", lambda m: setattr(f, "max_final", 0.5))
    s.take(r"\b(?:blocked|dropped|drops?|banned)\b", lambda m: _add(f.decisions, "DROP"))
    s.take(r"\b(?:alerts?|alerted|warnings?)\b", lambda m: _add(f.decisions, "ALERT"))
    s.take(r"\b(?:allowed|permitted|passed)\b", lambda m: _add(f.decisions, "ALLOW"))
    s.take(r"\bmalicious\b", lambda m: _add(f.verdicts, "MALICIOUS"))
    s.take(r"\bsuspicious\b", lambda m: _add(f.verdicts, "SUSPICIOUS"))
    s.take(r"\bbenign\b", lambda m: _add(f.verdicts, "BENIGN"))
    s.take(
        r"\b(?:rag[\s_-]+required|need(?:s|ing)?\s+review|for\s+review)\b",
        lambda m: setattr(f, "rag_required", True),
    )

    # --- addresses, ports, protocols -----------------------------------------------------------
    def addr(m: re.Match[str]) -> bool | None:
        text = m.group(2)
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return False
        word = (m.group(1) or "").lower().strip()
        target = (
            f.src_nets
            if word in ("from", "source", "src", "by")
            else f.dst_nets
            if word in ("to", "against", "destination", "dst", "targeting", "toward", "towards")
            else f.any_nets
        )
        target.append(text)
        return None

    s.take(
        rf"\b(?:(from|source|src|by|to|against|destination|dst|targeting|towards?|involving|address|host|ip)\s+)?({_IPV4}|{_IPV6})",
        addr,
    )
    s.take(
        r"\b(?:dst\s+|destination\s+|src\s+|source\s+)?ports?\s+(\d{1,5}(?:\s*(?:,|and|or|/)\s*\d{1,5})*)\b",
        lambda m: f.ports.extend(int(p) for p in re.findall(r"\d+", m.group(1)) if int(p) <= 65535),
    )

    def port_proto(m: re.Match[str]) -> None:
        f.ports.append(int(m.group(1)))
        _add(f.protocols, m.group(2).lower())

    s.take(r"\b(\d{1,5})/(tcp|udp)\b", port_proto)
    s.take(
        r"\b(tcp|udp|icmpv6|icmp)\b",
        lambda m: _add(f.protocols, "ipv6-icmp" if m.group(1).lower() == "icmpv6" else m.group(1).lower()),
    )
    s.take(
        r"\b(ssh|smb|rdp|dns|telnet|ftp|snmp|https|http|smtp)\b",
        lambda m: f.ports.extend(p for p in SERVICE_PORTS[m.group(1).lower()] if p not in f.ports),
    )

    # --- attack words: a filter only for attack types the index holds -----------------------------
    def attack(name: str) -> Callable[[re.Match[str]], None]:
        return lambda _m: _add(f.attack_types, name)

    for pattern, name in ATTACK_ALIASES:
        if name in known_attacks:
            s.take(pattern, attack(name))

    # --- ordering and size ---------------------------------------------------------------------
    def top_n(m: re.Match[str]) -> None:
        pq.limit = int(m.group(1))

    s.take(r"\b(?:top|first|last|latest)\s+(\d{1,4})\b", top_n)
    s.take(
        r"\b(?:most\s+recent|latest|newest|recent|recently|last)\b", lambda m: setattr(pq, "order", "recent")
    )
    s.take(r"\boldest|earliest\b", lambda m: setattr(pq, "order", "oldest"))
    s.take(r"\bmost\s+divergent\b", lambda m: setattr(pq, "order", "divergence"))
    if f.min_divergence is not None and pq.order == "severity":
        pq.order = "divergence"

    words = [w for w in re.findall(r"[\w'-]+", s.text.lower()) if w not in STOPWORDS and not w.isdigit()]
    pq.semantic = " ".join(words)
    pq.matched = s.matched
    return pq


def _add(values: list[str], value: str) -> None:
    if value not in values:
        values.append(value)


def _set_range(f: Filters, since: int, until: int) -> None:
    f.since_ns, f.until_ns = since, until
