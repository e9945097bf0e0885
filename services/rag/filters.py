"""Structured filters of a question and their SQL form (pure; the parser builds them, the store runs them)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any


def ip_key(addr: str) -> bytes:
    """16-byte sortable form of an address (IPv4 mapped into ::ffff:0:0/96), so a CIDR is a byte range."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def net_range(cidr: str) -> tuple[bytes, bytes]:
    net = ipaddress.ip_network(cidr, strict=False)
    return ip_key(str(net.network_address)), ip_key(str(net.broadcast_address))


@dataclass
class Filters:
    """Conditions that every answer must meet; None / empty means 'no condition'."""

    since_ns: int | None = None
    until_ns: int | None = None
    src_nets: list[str] = field(default_factory=list)
    dst_nets: list[str] = field(default_factory=list)
    any_nets: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    classifications: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    attack_types: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    min_divergence: float | None = None
    min_final: float | None = None
    max_final: float | None = None
    min_fast: float | None = None
    max_fast: float | None = None
    min_ml: float | None = None
    max_ml: float | None = None
    rag_required: bool | None = None

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) not in (None, []) for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, [])
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Filters:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _in(column: str, values: list[Any], params: list[Any]) -> str:
    params.extend(values)
    return f"{column} IN ({','.join('?' * len(values))})"


def _nets(column: str, nets: list[str], params: list[Any]) -> str:
    parts = []
    for cidr in nets:
        lo, hi = net_range(cidr)
        parts.append(f"({column} BETWEEN ? AND ?)")
        params.extend([lo, hi])
    return "(" + " OR ".join(parts) + ")"


def where_sql(f: Filters) -> tuple[str, list[Any]]:
    """`WHERE ...` (or '') and its parameters for the events table."""
    conds: list[str] = []
    params: list[Any] = []
    for column, value, op in (
        ("ts_ns", f.since_ns, ">="),
        ("ts_ns", f.until_ns, "<"),
        ("divergence", f.min_divergence, ">"),
        ("final_score", f.min_final, ">="),
        ("final_score", f.max_final, "<"),
        ("fast_score", f.min_fast, ">="),
        ("fast_score", f.max_fast, "<"),
        ("ml_score", f.min_ml, ">="),
        ("ml_score", f.max_ml, "<"),
    ):
        if value is not None:
            conds.append(f"{column} {op} ?")
            params.append(value)
    if f.src_nets:
        conds.append(_nets("src_key", f.src_nets, params))
    if f.dst_nets:
        conds.append(_nets("dst_key", f.dst_nets, params))
    if f.any_nets:
        conds.append(
            "(" + _nets("src_key", f.any_nets, params) + " OR " + _nets("dst_key", f.any_nets, params) + ")"
        )
    if f.ports:
        conds.append("(" + _in("dst_port", f.ports, params) + " OR " + _in("src_port", f.ports, params) + ")")
    for column, values in (
        ("protocol", f.protocols),
        ("classification", f.classifications),
        ("decision", f.decisions),
        ("verdict", f.verdicts),
        ("attack_type", f.attack_types),
    ):
        if values:
            conds.append(_in(column, values, params))
    for rule in f.rules:
        conds.append("rules LIKE ?")
        params.append(f"%,{rule},%")
    if f.rag_required is not None:
        conds.append("rag_required = ?")
        params.append(int(f.rag_required))
    return ("WHERE " + " AND ".join(conds)) if conds else "", params
