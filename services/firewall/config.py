"""Settings of the firewall: one immutable pydantic object that app.py can swap atomically.

HOT_FIELDS lists what a live reload may change without a restart; every other field (backend,
table, socket, metrics endpoint, journal path) needs a restart because it names an opened resource.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.common.settings import MetricsSettings, ServiceSettings
from libs.common.zmqio import SocketSettings

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,23}$")


class AllowListSettings(BaseModel):
    """Sources that are never blocked, whatever arrives. Loopback and link-local are always in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cidrs: tuple[str, ...] = Field(
        (), description="extra networks or addresses (e.g. the gateway, admin hosts)"
    )
    peers: tuple[str, ...] = Field(
        ("127.0.0.1",),
        description="etcd and pipeline peers: addresses, host names or URLs (http://h:2379, tcp://h:5572)",
    )
    own_addresses: bool = Field(True, description="add every address configured on this node's interfaces")


class FirewallSettings(ServiceSettings):
    """Everything the firewall reads; every number is a setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: MetricsSettings = MetricsSettings(port=9105)
    input: SocketSettings = SocketSettings(endpoint="tcp://127.0.0.1:5572", bind=True)
    backend: Literal["nftables", "ipset", "dry_run"] = "nftables"
    nft_interface: Literal["libnftables", "cli"] = Field(
        "libnftables", description="libnftables in process (no fork per batch) or the `nft` command"
    )
    table: str = Field(
        "ml_defender", description="nftables table (family inet) or ipset/iptables name prefix"
    )
    chain_priority: int = Field(-5, ge=-400, le=400, description="priority of our input/forward chains")
    dry_run_journal: Path = Field(
        Path("var/lab/firewall-dry-run.jsonl"), description="dry_run: JSON lines of the applied transactions"
    )
    decisions: tuple[Literal["DROP", "ALERT"], ...] = Field(
        ("DROP",), description="event decisions that block"
    )
    timeout_s: float = Field(3600.0, gt=0, le=30 * 86400, description="first ban of a source")
    jitter_fraction: float = Field(0.1, ge=0, lt=1, description="timeouts spread by +-this fraction")
    escalation_factor: float = Field(
        2.0, ge=1.0, le=100.0, description="timeout multiplier per repeat offence"
    )
    max_timeout_s: float = Field(86400.0, gt=0, le=365 * 86400, description="cap of escalated timeouts")
    offence_memory_s: float = Field(86400.0, ge=0, description="how long an expired ban counts as an offence")
    offender_memory_entries: int = Field(100_000, ge=0, description="bounded history of past offenders")
    refresh_min_s: float = Field(
        60.0, ge=0, description="a repeat re-arms the timeout once at least this much of it has run"
    )
    max_elements_v4: int = Field(65_536, ge=1, description="cap on IPv4 bans (addresses and prefixes)")
    max_elements_v6: int = Field(65_536, ge=1, description="cap on IPv6 bans (addresses and prefixes)")
    min_prefix_v4: int = Field(16, ge=0, le=32, description="wider IPv4 prefixes are refused as invalid")
    min_prefix_v6: int = Field(32, ge=0, le=128, description="wider IPv6 prefixes are refused as invalid")
    batch_size: int = Field(1024, ge=1, le=100_000, description="ops per kernel transaction at most")
    batch_interval_ms: float = Field(5.0, ge=0, le=10_000, description="a batch waits at most this long")
    reconcile_interval_s: float = Field(
        60.0, ge=0, description="re-read the kernel this often (0: only at start); catches operator edits"
    )
    allow: AllowListSettings = AllowListSettings()

    @field_validator("table")
    @classmethod
    def _table_name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("table must be a letter then letters, digits or _ (at most 24 characters)")
        return v


HOT_FIELDS: tuple[str, ...] = (
    "log_level",
    "decisions",
    "timeout_s",
    "jitter_fraction",
    "escalation_factor",
    "max_timeout_s",
    "offence_memory_s",
    "offender_memory_entries",
    "refresh_min_s",
    "max_elements_v4",
    "max_elements_v6",
    "min_prefix_v4",
    "min_prefix_v6",
    "batch_size",
    "batch_interval_ms",
    "reconcile_interval_s",
    "allow",
)
RESTART_FIELDS: tuple[str, ...] = tuple(f for f in FirewallSettings.model_fields if f not in HOT_FIELDS)


def restart_changes(old: FirewallSettings, new: FirewallSettings) -> list[str]:
    """Restart-required fields that differ: a live reload must refuse these and keep the old settings."""
    return [f for f in RESTART_FIELDS if getattr(old, f) != getattr(new, f)]


def hot_changes(old: FirewallSettings, new: FirewallSettings) -> dict[str, tuple[object, object]]:
    """Hot fields that differ, as (old, new), for the reload log line."""
    return {f: (getattr(old, f), getattr(new, f)) for f in HOT_FIELDS if getattr(old, f) != getattr(new, f)}
