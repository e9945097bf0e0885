"""One envelope for events: ids, Community ID, and the JSON form of a DetectionEvent.

The JSON form is used by `mld-detector analyze --jsonl`, the `.json` artifacts and the daily
`.jsonl`; `event_to_dict` is its only producer so the three never disagree.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import operator
import os
import socket
import struct
import threading
import time
from datetime import UTC, datetime
from typing import Any

from ml_defender.v1 import config_pb2, detection_pb2, flow_pb2

PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
_uuid_lock = threading.Lock()
_uuid_last = [0, 0]  # last millisecond, counter within it


def uuid7(now_ns: int | None = None) -> str:
    """A time-ordered UUIDv7 (RFC 9562): 48-bit ms timestamp, 12-bit counter, 62 random bits.

    The counter keeps ids strictly increasing within one process even inside one millisecond.
    """
    ms = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
    with _uuid_lock:
        if ms <= _uuid_last[0]:
            ms = _uuid_last[0]
            _uuid_last[1] += 1
            if _uuid_last[1] > 0xFFF:
                ms += 1
                _uuid_last[1] = 0
        else:
            _uuid_last[1] = 0
        _uuid_last[0] = ms
        counter = _uuid_last[1]
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_time_ns(event_id: str) -> int:
    """The millisecond timestamp inside a UUIDv7, in ns."""
    return int(event_id.replace("-", "")[:12], 16) * 1_000_000


def ip_text(addr: bytes) -> str:
    """4 or 16 network-order bytes as the usual text form; '' for an empty address."""
    if len(addr) == 4:  # inet_ntop gives ipaddress' text for IPv4 at a fifth of the cost
        return socket.inet_ntop(socket.AF_INET, addr)
    if not addr:
        return ""
    return str(ipaddress.ip_address(addr))


def ip_bytes(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def community_id(src: bytes, dst: bytes, sport: int, dport: int, proto: int, seed: int = 0) -> str:
    """Community ID v1 (https://github.com/corelight/community-id-spec) of a flow tuple."""
    icmp_pairs_v4 = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 10: 9, 9: 10}
    icmp_pairs_v6 = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130}
    one_way = False
    if proto in (1, 58):
        pairs = icmp_pairs_v4 if proto == 1 else icmp_pairs_v6
        icmp_type, icmp_code = sport, dport
        if icmp_type in pairs:
            sport, dport = icmp_type, pairs[icmp_type]
        else:
            sport, dport = icmp_type, icmp_code
            one_way = True
    if not one_way and (src, sport) > (dst, dport):
        src, dst, sport, dport = dst, src, dport, sport
    has_ports = proto in (1, 6, 17, 58, 132)
    data = struct.pack("!H", seed) + src + dst + struct.pack("!BB", proto, 0)
    if has_ports:
        data += struct.pack("!HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def rfc3339(ns: int) -> str:
    """ns since the epoch as RFC 3339 UTC with microseconds.

    Same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") (int64 ns only reach years 1677-2262, always four
    digits) at a third of the cost; the float division keeps its rounding of the microseconds.
    """
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="microseconds")[:-6] + "Z"


_ENUM_PREFIX: dict[str, str] = {}
_ENUM_SHORT: dict[int, dict[int, str]] = {}  # id(enum wrapper) -> value -> short name


def _enum_prefix(enum: Any) -> str:
    """`Decision` -> `DECISION_` (cached: this runs for every event written)."""
    name: str = enum.DESCRIPTOR.name
    prefix = _ENUM_PREFIX.get(name)
    if prefix is None:
        prefix = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name)).upper() + "_"
        _ENUM_PREFIX[name] = prefix
    return prefix


def enum_name(enum: Any, value: int) -> str:
    """`DECISION_DROP` -> `DROP`: the enum's own prefix removed (cached per value: hot path)."""
    names = _ENUM_SHORT.get(id(enum))
    if names is None:
        names = _ENUM_SHORT.setdefault(id(enum), {})
    short = names.get(value)
    if short is None:
        name: str = enum.Name(value)  # ValueError for an unknown value, as before
        prefix = _enum_prefix(enum)
        short = name[len(prefix) :] if name.startswith(prefix) else name
        names[value] = short
    return short


def enum_value(enum: Any, short: str) -> int:
    """`DROP` -> DECISION_DROP's number (inverse of enum_name)."""
    for value in enum.values():
        if enum_name(enum, value) == short:
            return int(value)
    raise ValueError(f"{short!r} is not a {enum.DESCRIPTOR.name}")


FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in flow_pb2.FlowFeatures.DESCRIPTOR.fields)
_FEATURE_VALUES = operator.attrgetter(*FEATURE_NAMES)  # one C call for all fields


def features_dict(features: flow_pb2.FlowFeatures) -> dict[str, float | int]:
    """Every feature by name (zeros included: a model's input is the full vector)."""
    return dict(zip(FEATURE_NAMES, _FEATURE_VALUES(features), strict=True))


def flow_dict(flow: flow_pb2.FlowRecord) -> dict[str, Any]:
    key = flow.key
    return {
        "flow_id": flow.flow_id,
        "community_id": flow.community_id,
        "src_ip": ip_text(key.src_addr),
        "dst_ip": ip_text(key.dst_addr),
        "src_port": key.src_port,
        "dst_port": key.dst_port,
        "protocol": PROTOCOL_NAMES.get(key.protocol, str(key.protocol)),
        "protocol_number": key.protocol,
        "vlan_id": key.vlan_id,
        "first_seen": rfc3339(flow.first_seen_ns),
        "last_seen": rfc3339(flow.last_seen_ns),
        "end_reason": enum_name(flow_pb2.EndReason, flow.end_reason),
        "node_id": flow.node_id,
        "interface": flow.interface,
    }


def event_to_dict(ev: detection_pb2.DetectionEvent) -> dict[str, Any]:
    """The JSON form of an event: stable top-level fields first, then the details."""
    flow = flow_dict(ev.flow)
    ts = ev.timestamps
    th = ev.thresholds
    # protobuf maps iterate their items() in Python; keys and lookups stay in C
    scores = ev.ml_scores
    versions = ev.model_versions
    doc: dict[str, Any] = {
        "event_id": ev.event_id,
        "timestamp": flow["last_seen"],  # the same instant
        "src_ip": flow["src_ip"],
        "dst_ip": flow["dst_ip"],
        "src_port": flow["src_port"],
        "dst_port": flow["dst_port"],
        "protocol": flow["protocol"],
        "community_id": ev.flow.community_id,
        "fast_score": round(ev.fast_score, 6),
        "ml_score": round(ev.ml_score, 6),
        "ml_scores": {k: round(scores[k], 6) for k in sorted(scores)},  # map keys are unique
        "final_score": round(ev.final_score, 6),
        "divergence": round(ev.divergence, 6),
        "classification": enum_name(detection_pb2.Classification, ev.classification),
        "verdict": enum_name(detection_pb2.Verdict, ev.verdict),
        "decision": enum_name(detection_pb2.Decision, ev.decision),
        "attack_type": ev.attack_type,
        "rag_required": ev.rag_required,
        "rules": list(ev.rules),
        "features": features_dict(ev.flow.features),
        "explanation": [
            {
                "feature": c.feature,
                "value": c.value,
                "contribution": round(c.contribution, 6),
                "model": c.model,
            }
            for c in ev.explanation
        ],
        "flow": flow,
        "model_versions": {k: versions[k] for k in sorted(versions)},
        "config_revision": ev.config_revision,
        "thresholds": {
            "drop": th.drop,
            "alert": th.alert,
            "divergence": th.divergence,
            "rag_final": th.rag_final,
            "consensus_ml": th.consensus_ml,
        },
        "stage_ns": {
            "captured": ts.captured_ns,
            "exported": ts.exported_ns,
            "scored": ts.scored_ns,
            "logged": ts.logged_ns,
        },
        "node_id": ev.node_id,
    }
    return doc


def config_change_to_dict(change: config_pb2.ConfigChange) -> dict[str, Any]:
    return {
        "change_id": change.change_id,
        "timestamp": rfc3339(change.timestamp_ns),
        "service": change.service,
        "node": change.node,
        "old_revision": change.old_revision,
        "new_revision": change.new_revision,
        "result": enum_name(config_pb2.ConfigResult, change.result),
        "error": change.error,
        "diff": [{"path": d.path, "old": d.old_json, "new": d.new_json, "hot": d.hot} for d in change.diff],
    }
