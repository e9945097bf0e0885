"""Events stated in words: the text that gets embedded, and the one-line "why" of an answer.

The embedded text says what the event means (attack, roles of the hosts, service, what each
detector concluded, rules fired, telling features) in buckets rather than raw numbers. Exact
addresses, ports and scores are matched by SQLite filters, where they belong: a sentence embedding
of "198.19.4.7" carries no meaning, and bucketing keeps the number of distinct texts small, so the
embedder (the costly step) runs once per distinct text rather than once per event.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

SERVICES: dict[int, str] = {
    20: "FTP data",
    21: "FTP",
    22: "SSH",
    23: "Telnet",
    25: "SMTP",
    53: "DNS",
    80: "HTTP",
    110: "POP3",
    123: "NTP",
    139: "NetBIOS/SMB",
    143: "IMAP",
    161: "SNMP",
    389: "LDAP",
    443: "HTTPS",
    445: "SMB",
    3306: "MySQL",
    3389: "RDP",
    4444: "Metasploit-style shell",
    5432: "PostgreSQL",
    5900: "VNC",
    6667: "IRC",
    8080: "HTTP alternate",
    8443: "HTTPS alternate",
    9100: "node exporter",
}
ATTACK_WORDS: dict[str, str] = {
    "port_scan": "port scan probing many ports",
    "ddos": "denial of service flood",
    "brute_force": "brute force password guessing",
    "ransomware": "ransomware on file shares",
    "icmp_sweep": "ICMP ping sweep of many hosts",
    "anomalous_traffic": "anomalous traffic",
    "lateral_movement": "lateral movement between internal hosts",
}
RULE_WORDS: dict[str, str] = {
    "distinct_dst_ports": "many distinct destination ports",
    "distinct_dst_addrs": "many distinct destination addresses",
    "smb_connections": "many SMB connections",
    "rst_ratio": "many reset connections",
    "syn_flood": "SYN flood (half-open connections)",
    "icmp_sweep": "ICMP sweep",
}
FEATURE_WORDS: dict[str, str] = {
    "dst_port": "destination port",
    "protocol": "protocol",
    "bidirectional_packets": "packet count",
    "bidirectional_bytes": "byte count",
    "src2dst_bytes": "bytes uploaded",
    "dst2src_bytes": "bytes downloaded",
    "bidirectional_duration_ms": "duration",
    "bidirectional_mean_ps": "packet size",
    "bidirectional_mean_piat_ms": "time between packets",
    "bidirectional_stddev_piat_ms": "timing regularity",
    "bidirectional_syn_packets": "SYN packets",
    "bidirectional_rst_packets": "reset packets",
}
DEFAULT_INTERNAL = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/16",
    "fc00::/7",
    "2001:db8:1::/48",
)


class AddressRoles:
    """Internal vs external by configured CIDRs (the text says 'internal host', not the address)."""

    def __init__(self, internal_cidrs: Sequence[str] = DEFAULT_INTERNAL) -> None:
        self.nets = [ipaddress.ip_network(c, strict=False) for c in internal_cidrs]
        self._cache: dict[str, str] = {}

    def role(self, addr: str) -> str:
        """Cached: a node sees the same few thousand addresses again and again."""
        got = self._cache.get(addr)
        if got is None:
            if len(self._cache) >= 65_536:
                self._cache.clear()
            got = self._cache[addr] = self._role(addr)
        return got

    def _role(self, addr: str) -> str:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return "unknown host"
        if ip.is_loopback:
            return "local host"
        return (
            "internal host"
            if any(ip.version == n.version and ip in n for n in self.nets)
            else "external host"
        )


def bucket(score: float) -> str:
    if score >= 0.9:
        return "very high"
    if score >= 0.7:
        return "high"
    if score >= 0.5:
        return "medium"
    if score >= 0.2:
        return "low"
    return "very low"


def _port_words(port: int, protocol: str) -> str:
    if protocol in ("icmp", "ipv6-icmp"):
        return "ICMP echo" if port in (0, 8, 128) else "ICMP"
    name = SERVICES.get(port)
    if name:
        return f"{name} port {port}"
    return (
        "a well-known port" if port < 1024 else ("a registered port" if port < 49152 else "an ephemeral port")
    )


def _behaviour(doc: dict[str, Any], dst_role: str) -> list[str]:
    """Plain-language reading of the flow's features (what an analyst would say at a glance)."""
    f = doc.get("features") or {}
    out: list[str] = []
    pk = int(f.get("bidirectional_packets", 0))
    dur = float(f.get("bidirectional_duration_ms", 0.0))
    mean_piat = float(f.get("bidirectional_mean_piat_ms", 0.0))
    sd_piat = float(f.get("bidirectional_stddev_piat_ms", 0.0))
    up = int(f.get("src2dst_bytes", 0))
    if pk >= 50 and dur >= 300_000 and mean_piat > 0 and sd_piat < 0.05 * mean_piat:
        out.append(
            "long connection, small packets at fixed intervals: periodic beaconing, like a botnet calling "
            "its command and control server"
        )
    if up >= 10_000_000 and dst_role == "external host":
        out.append("huge upload to an external host: possible data exfiltration")
    if int(f.get("bidirectional_syn_packets", 0)) >= 100 and mean_piat < 5:
        out.append("SYN packets at a very high rate")
    if pk <= 3 and int(f.get("bidirectional_rst_packets", 0)) > 0:
        out.append("tiny probe answered with a reset")
    if not out:
        out.append("short flow" if dur < 1000 else ("long flow" if dur >= 60_000 else "flow"))
    return out


def event_text(doc: dict[str, Any], roles: AddressRoles) -> str:
    """The sentence embedded for semantic search (bucketed; see the module docstring)."""
    src_role, dst_role = roles.role(str(doc.get("src_ip", ""))), roles.role(str(doc.get("dst_ip", "")))
    proto = str(doc.get("protocol", ""))
    attack = str(doc.get("attack_type") or "")
    fast, ml = float(doc.get("fast_score", 0.0)), float(doc.get("ml_score", 0.0))
    scores: dict[str, float] = doc.get("ml_scores") or {}
    top_model = max(scores, key=lambda k: scores[k]) if scores else "ml"
    rules = [RULE_WORDS.get(r, r.replace("_", " ")) for r in doc.get("rules") or []]
    parts = [
        (ATTACK_WORDS.get(attack, attack.replace("_", " ")) if attack else "no attack type named") + ".",
        f"{proto.upper()} from {src_role} to {dst_role} on {_port_words(int(doc.get('dst_port', 0)), proto)}.",
        (
            "Fast detector fired: " + ", ".join(rules) + "."
            if rules or fast >= 0.5
            else "Fast detector silent."
        ),
        f"ML score {bucket(ml)}" + (f" ({top_model} model)." if ml >= 0.5 else "."),
    ]
    cls = str(doc.get("classification", ""))
    if cls == "DIVERGENCE":
        parts.append(
            "Fast detector triggered but ML disagreed."
            if fast > ml
            else "ML flagged it, fast detector did not."
        )
    elif cls == "CONSENSUS":
        parts.append("Both detectors agree.")
    decision = str(doc.get("decision", ""))
    parts.append(
        {"DROP": "Blocked.", "ALERT": "Alert raised.", "ALLOW": "Allowed as benign."}.get(
            decision, f"{decision}."
        )
    )
    parts.extend(s[0].upper() + s[1:] + "." for s in _behaviour(doc, dst_role))
    return " ".join(parts)


def why_line(doc: dict[str, Any]) -> str:
    """One line saying why the event matters, with the exact numbers."""
    rules = ",".join(doc.get("rules") or []) or "-"
    scores: dict[str, float] = doc.get("ml_scores") or {}
    top = max(scores, key=lambda k: scores[k]) if scores else "ml"
    attack = doc.get("attack_type") or "unnamed"
    return (
        f"{doc.get('decision')} {attack}: {doc.get('classification')} fast={float(doc.get('fast_score', 0)):.2f}"
        f"[{rules}] ml={float(doc.get('ml_score', 0)):.2f}({top}) final={float(doc.get('final_score', 0)):.2f}"
        f" div={float(doc.get('divergence', 0)):.2f}"
    )
