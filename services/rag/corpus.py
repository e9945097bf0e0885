"""A generator of realistic DetectionEvent corpora, written as artifact pairs like the rag-logger's.

Why: tests and benchmarks need many events with known ground truth (which scenario produced each
one) at chosen times, without running the whole pipeline. Seeded, so a corpus (ids included) is
the same on every run.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from libs.common.events import community_id, event_to_dict, ip_bytes
from ml_defender.v1 import detection_pb2, flow_pb2

SCENARIOS: dict[str, float] = {
    "benign_web": 0.14,
    "benign_dns": 0.06,
    "port_scan": 0.14,
    "syn_flood": 0.12,
    "ssh_brute_force": 0.12,
    "botnet_beacon": 0.10,
    "smb_ransomware": 0.10,
    "icmp_sweep": 0.06,
    "fast_false_positive": 0.08,
    "exfiltration": 0.08,
}
HOUR_NS = 3600 * 1_000_000_000


@dataclass(frozen=True)
class Generated:
    """One generated event and the scenario that produced it (the ground truth)."""

    event: detection_pb2.DetectionEvent
    scenario: str


def _uuid7(rng: random.Random, ns: int) -> str:
    ms = ns // 1_000_000
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _classify(fast: float, ml: float) -> tuple[int, int, int, bool]:
    """Classification, verdict, decision, rag_required as the detector decides them (DESIGN.md 3)."""
    c = detection_pb2
    final, div = max(fast, ml), abs(fast - ml)
    fired = fast >= 0.5
    if fired and ml > 0.5:
        cls = c.CLASSIFICATION_CONSENSUS
    elif div > 0.30:
        cls = c.CLASSIFICATION_DIVERGENCE
    elif fired:
        cls = c.CLASSIFICATION_FAST_ONLY
    elif ml >= 0.5:
        cls = c.CLASSIFICATION_ML_ONLY
    else:
        cls = c.CLASSIFICATION_BENIGN
    if final >= 0.70:
        verdict, decision = c.VERDICT_MALICIOUS, c.DECISION_DROP
    elif final >= 0.5:
        verdict, decision = c.VERDICT_SUSPICIOUS, c.DECISION_ALERT
    else:
        verdict, decision = c.VERDICT_BENIGN, c.DECISION_ALLOW
    return cls, verdict, decision, div > 0.30 or final >= 0.85


class CorpusGenerator:
    """Events over `days` days ending at `now_ns`, mixed by SCENARIOS, reproducible from `seed`."""

    def __init__(self, seed: int = 7, now_ns: int | None = None, days: float = 3.0) -> None:
        self.rng = random.Random(seed)
        self.now_ns = (
            now_ns if now_ns is not None else int(datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp() * 1e9)
        )
        self.span_ns = int(days * 24 * HOUR_NS)
        self.attackers = [f"198.19.{self.rng.randint(0, 255)}.{self.rng.randint(1, 254)}" for _ in range(12)]
        self.c2 = [f"198.19.200.{i}" for i in (7, 66, 99)] + ["2001:db8:bad::c2"]
        self.internal = [f"198.18.0.{i}" for i in range(10, 40)] + ["2001:db8:1::10", "2001:db8:1::20"]
        self.servers = ["198.18.0.5", "198.18.0.6", "2001:db8:1::5"]
        self.monitor = "198.18.0.250"
        self.flow_id = 0

    def generate(self, n: int) -> list[Generated]:
        return list(self.iter(n))

    def iter(self, n: int) -> Iterator[Generated]:
        names = list(SCENARIOS)
        weights = [SCENARIOS[k] for k in names]
        times = sorted(self.now_ns - self.rng.randrange(self.span_ns) for _ in range(n))
        for ts in times:
            scenario = self.rng.choices(names, weights)[0]
            yield Generated(self._event(scenario, ts), scenario)

    def _event(self, scenario: str, ts: int) -> detection_pb2.DetectionEvent:
        r = self.rng
        fam = r.choice(["v4"] * 9 + ["v6"])

        def pick(pool: list[str]) -> str:
            same = [a for a in pool if (":" in a) == (fam == "v6")]
            return r.choice(same or pool)

        rules: list[str] = []
        fast = 0.0
        proto, sport, dport = 6, r.randint(32768, 60999), 443
        pk, size, dur_ms, piat_sd = (
            r.randint(8, 40),
            r.uniform(300, 1200),
            r.uniform(50, 3000),
            r.uniform(5, 80),
        )
        syn, rst, attack = 1, 0, ""
        scores = {
            "ddos": r.uniform(0.01, 0.15),
            "ransomware": r.uniform(0.01, 0.1),
            "traffic": r.uniform(0.02, 0.2),
            "internal": r.uniform(0.01, 0.1),
        }
        if scenario == "benign_web":
            src, dst, dport = (
                pick(self.internal),
                f"198.19.{r.randint(0, 99)}.{r.randint(1, 254)}",
                r.choice([443, 80]),
            )
        elif scenario == "benign_dns":
            src, dst, proto, dport, pk, size = (
                pick(self.internal),
                "198.18.0.2",
                17,
                53,
                2,
                r.uniform(60, 200),
            )
        elif scenario == "port_scan":
            src, dst, dport = pick(self.attackers), pick(self.servers + self.internal), r.randint(1, 10000)
            pk, size, dur_ms, rst, rules, fast = 2, 58.0, r.uniform(0.1, 2), 1, ["distinct_dst_ports"], 0.75
            scores["traffic"] = r.uniform(0.6, 0.97)
            attack = "port_scan"
        elif scenario == "syn_flood":
            src, dst, dport = pick(self.attackers), pick(self.servers), 80
            pk, size, dur_ms, syn, piat_sd = (
                r.randint(200, 5000),
                60.0,
                r.uniform(500, 5000),
                1,
                r.uniform(0.01, 0.5),
            )
            rules, fast = ["syn_flood"], 0.75
            scores["ddos"] = r.uniform(0.85, 0.999)
            attack = "ddos"
        elif scenario == "ssh_brute_force":
            src, dst, dport = pick(self.attackers), pick(self.servers), 22
            pk, size, dur_ms, rst = (
                r.randint(12, 30),
                r.uniform(80, 200),
                r.uniform(500, 4000),
                r.choice([0, 1]),
            )
            if r.random() < 0.5:
                rules, fast = ["rst_ratio"], 0.75
            scores["traffic"] = r.uniform(0.8, 0.98)
            attack = "brute_force"
        elif scenario == "botnet_beacon":
            src, dst, dport = pick(self.internal), pick(self.c2), r.choice([8443, 6667, 4444])
            pk, size, dur_ms, piat_sd = (
                r.randint(60, 400),
                r.uniform(90, 160),
                r.uniform(600_000, 1_700_000),
                r.uniform(0.1, 3),
            )
            scores["traffic"] = r.uniform(0.72, 0.92)
            attack = "anomalous_traffic"
        elif scenario == "smb_ransomware":
            src, dst, dport = pick(self.internal), pick(self.internal + self.servers), 445
            pk, size, dur_ms = r.randint(500, 5000), r.uniform(900, 1400), r.uniform(2000, 60000)
            rules, fast = ["smb_connections"], 0.75
            scores["ransomware"] = r.uniform(0.85, 0.99)
            scores["internal"] = r.uniform(0.5, 0.9)
            attack = "ransomware"
        elif scenario == "icmp_sweep":
            src, dst, proto, sport, dport = pick(self.attackers), pick(self.internal), 1, 8, 0
            pk, size, dur_ms, syn = 1, 84.0, 0.0, 0
            rules, fast = ["icmp_sweep"], 0.75
            scores["traffic"] = r.uniform(0.55, 0.8)
            attack = "icmp_sweep"
            if fam == "v6":
                src, dst, proto, sport = "2001:db8:bad::1", "2001:db8:1::10", 58, 128
        elif scenario == "fast_false_positive":
            # A monitoring host touching many addresses: the fast rule fires, the models see nothing wrong.
            src, dst, dport = self.monitor, pick(self.internal), r.choice([161, 443, 9100])
            proto = 17 if dport == 161 else 6
            rules, fast = [r.choice(["distinct_dst_addrs", "distinct_dst_ports"])], 0.75
            scores["traffic"] = r.uniform(0.05, 0.3)
        else:  # exfiltration: a long, large upload to an unknown external host
            src, dst, dport = (
                pick(self.internal),
                f"198.19.{r.randint(100, 199)}.{r.randint(1, 254)}",
                r.choice([443, 8080, 21]),
            )
            pk, size, dur_ms = r.randint(20_000, 200_000), r.uniform(1300, 1500), r.uniform(60_000, 900_000)
            scores["traffic"] = r.uniform(0.7, 0.9)
            attack = "anomalous_traffic"
        if ":" in src and ":" not in dst:
            dst = pick([a for a in self.internal + self.servers if ":" in a])
        if ":" in dst and ":" not in src:
            src = "2001:db8:bad::" + format(r.randint(1, 0xFFF), "x")
        ml = max(scores.values())
        final, div = max(fast, ml), abs(fast - ml)
        cls, verdict, decision, rag = _classify(fast, ml)
        self.flow_id += 1
        flow = flow_pb2.FlowRecord(
            flow_id=self.flow_id,
            community_id=community_id(ip_bytes(src), ip_bytes(dst), sport, dport, proto),
            key=flow_pb2.FlowKey(
                src_addr=ip_bytes(src), dst_addr=ip_bytes(dst), src_port=sport, dst_port=dport, protocol=proto
            ),
            first_seen_ns=ts - int(dur_ms * 1e6),
            last_seen_ns=ts,
            end_reason=flow_pb2.END_REASON_IDLE
            if proto != 6
            else (flow_pb2.END_REASON_RST if rst else flow_pb2.END_REASON_FIN),
            node_id="node-a",
            interface="veth-victim",
        )
        f = flow.features
        up = max(1, pk // 2 + 1)
        f.bidirectional_packets, f.src2dst_packets, f.dst2src_packets = pk, up, pk - up if pk > 1 else 0
        f.bidirectional_bytes = int(pk * size)
        f.src2dst_bytes = int(up * size)
        f.dst2src_bytes = f.bidirectional_bytes - f.src2dst_bytes
        f.bidirectional_duration_ms = dur_ms
        f.bidirectional_mean_ps = size
        f.bidirectional_min_ps = max(40.0, size * 0.5)
        f.bidirectional_max_ps = min(1514.0, size * 1.5)
        f.bidirectional_stddev_ps = size * 0.1
        f.bidirectional_mean_piat_ms = dur_ms / max(1, pk - 1)
        f.bidirectional_stddev_piat_ms = piat_sd
        f.bidirectional_syn_packets = syn if proto == 6 else 0
        f.bidirectional_rst_packets = rst
        f.bidirectional_ack_packets = max(0, pk - 1) if proto == 6 else 0
        f.dst_port, f.protocol = dport, proto
        ev = detection_pb2.DetectionEvent(
            event_id=_uuid7(r, ts),
            flow=flow,
            fast_score=fast,
            rules=rules,
            ml_score=ml,
            final_score=final,
            divergence=div,
            classification=cls,
            verdict=verdict,
            decision=decision,
            attack_type=attack,
            rag_required=rag,
            config_revision=1,
            node_id="node-a",
        )
        for k, v in scores.items():
            ev.ml_scores[k] = v
        ev.model_versions.update({k: "v1" for k in scores})
        ev.thresholds.drop, ev.thresholds.alert, ev.thresholds.divergence = 0.70, 0.50, 0.30
        ev.thresholds.rag_final, ev.thresholds.consensus_ml = 0.85, 0.50
        top = max(scores, key=lambda k: scores[k])
        for feat in _TOP_FEATURES[scenario]:
            ev.explanation.add(
                feature=feat,
                value=float(getattr(f, feat)),
                contribution=round(r.uniform(0.2, 1.5), 3),
                model=top,
            )
        ev.timestamps.captured_ns, ev.timestamps.exported_ns = ts, ts + 2_000_000
        ev.timestamps.scored_ns, ev.timestamps.logged_ns = ts + 3_000_000, ts + 5_000_000
        return ev


_TOP_FEATURES: dict[str, tuple[str, ...]] = {
    "benign_web": ("bidirectional_bytes", "dst_port"),
    "benign_dns": ("bidirectional_packets", "dst_port"),
    "port_scan": ("bidirectional_rst_packets", "bidirectional_packets", "bidirectional_duration_ms"),
    "syn_flood": ("bidirectional_syn_packets", "bidirectional_packets", "bidirectional_mean_piat_ms"),
    "ssh_brute_force": ("dst_port", "bidirectional_packets", "bidirectional_mean_ps"),
    "botnet_beacon": (
        "bidirectional_stddev_piat_ms",
        "bidirectional_mean_piat_ms",
        "bidirectional_duration_ms",
    ),
    "smb_ransomware": ("dst_port", "src2dst_bytes", "bidirectional_mean_ps"),
    "icmp_sweep": ("protocol", "bidirectional_packets"),
    "fast_false_positive": ("dst_port", "bidirectional_bytes"),
    "exfiltration": ("src2dst_bytes", "bidirectional_duration_ms", "bidirectional_mean_ps"),
}


def day_dir(root: Path, ts_ns: int) -> Path:
    return root / datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).strftime("%Y-%m-%d")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_pair(root: Path, ev: detection_pb2.DetectionEvent) -> tuple[Path, Path]:
    """Write event_<id>.pb and event_<id>.json the way the rag-logger does (temp name, then rename)."""
    d = day_dir(root, ev.flow.last_seen_ns)
    d.mkdir(parents=True, exist_ok=True)
    pb, js = d / f"event_{ev.event_id}.pb", d / f"event_{ev.event_id}.json"
    _atomic_write(pb, ev.SerializeToString())
    _atomic_write(js, json.dumps(event_to_dict(ev), separators=(",", ":")).encode())
    return pb, js


def write_corpus(
    root: Path, n: int, seed: int = 7, now_ns: int | None = None, days: float = 3.0
) -> list[Generated]:
    """Generate `n` events and write them as pairs under `root`; returns them with their scenarios."""
    gen = CorpusGenerator(seed, now_ns, days)
    events = gen.generate(n)
    for g in events:
        write_pair(root, g.event)
    return events
