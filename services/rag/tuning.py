"""accelerate / decelerate / optimize: bounded edits of the detector's and sniffer's etcd documents.

The pure part (step functions, profile choice, diff) takes documents and returns documents, so it
is tested without etcd. Steps use decimal arithmetic on the shortest repr of each number, so
`decelerate(accelerate(doc)) == doc` exactly, and a step that would leave the safe bounds is
refused as a whole rather than clamped (a clamped step could not be undone exactly).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.rag.errors import TuningError

# Detector thresholds moved by accelerate/decelerate (DESIGN.md section 3), with their defaults.
STEPPED: dict[str, float] = {
    "drop": 0.70,
    "alert": 0.50,
    "divergence": 0.30,
    "rag_final": 0.85,
    "consensus_ml": 0.50,
}
# Safe bounds per threshold: below them the detector floods the firewall, above it goes blind.
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "drop": (0.50, 0.95),
    "alert": (0.30, 0.90),
    "divergence": (0.10, 0.60),
    "rag_final": (0.50, 0.99),
    "consensus_ml": (0.30, 0.90),
}

# optimize: settings per profile, from fastest reaction (most CPU) to lightest; only hot fields.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "performance": {
        "ml-detector": {"batch.max_wait_ms": 2, "explain.top_k": 5},
        "sniffer": {
            "flows.export_interval_ms": 200,
            "flows.export_batch_size": 512,
            "fast_detector.max_sources": 65536,
        },
    },
    "balanced": {
        "ml-detector": {"batch.max_wait_ms": 5, "explain.top_k": 3},
        "sniffer": {
            "flows.export_interval_ms": 300,
            "flows.export_batch_size": 1024,
            "fast_detector.max_sources": 32768,
        },
    },
    "economy": {
        "ml-detector": {"batch.max_wait_ms": 10, "explain.top_k": 1},
        "sniffer": {
            "flows.export_interval_ms": 500,
            "flows.export_batch_size": 2048,
            "fast_detector.max_sources": 16384,
        },
    },
    "minimal": {
        "ml-detector": {"batch.max_wait_ms": 20, "explain.top_k": 0},
        "sniffer": {
            "flows.export_interval_ms": 1000,
            "flows.export_batch_size": 4096,
            "fast_detector.max_sources": 8192,
        },
    },
}


def _dec(x: float) -> Decimal:
    return Decimal(repr(float(x)))


def step_thresholds(
    doc: dict[str, Any], direction: int, step: float, bounds: dict[str, tuple[float, float]] | None = None
) -> dict[str, Any]:
    """A copy of the detector document with every stepped threshold moved by -step (direction -1,
    accelerate: more sensitive) or +step (+1, decelerate); TuningError when one would leave its bounds."""
    if direction not in (-1, 1):
        raise ValueError("direction must be -1 or +1")
    new = copy.deepcopy(doc)
    th = new.setdefault("thresholds", {})
    if not isinstance(th, dict):
        raise TuningError(
            "thresholds is not an object", "config/ml-detector", "fix the document with mld-config"
        )
    out_of_bounds = []
    for name, default in STEPPED.items():
        old = float(th.get(name, default))
        value = float(_dec(old) + direction * _dec(step))
        lo, hi = (bounds or DEFAULT_BOUNDS).get(name, (0.0, 1.0))
        if value < lo - 1e-12 or value > hi + 1e-12:
            out_of_bounds.append(f"{name} {old} -> {value} (bounds {lo}..{hi})")
        th[name] = value
    if out_of_bounds:
        word = "accelerate" if direction < 0 else "decelerate"
        raise TuningError(
            f"{word} refused, a threshold would leave its safe bounds: {'; '.join(out_of_bounds)}",
            "tuning.bounds",
            f"use {'decelerate' if direction < 0 else 'accelerate'}, or widen the bounds in the rag settings",
        )
    return new


@dataclass(frozen=True)
class Usage:
    """What the node uses now; temperature None when the machine does not report it."""

    cpu_pct: float
    ram_mb: float
    temp_c: float | None


@dataclass(frozen=True)
class Limits:
    cpu_pct: float
    ram_mb: float
    temp_c: float | None


def choose_profile(usage: Usage, limits: Limits) -> tuple[str, float, list[str]]:
    """The profile for the worst pressure (usage / limit): light when close to or over a limit."""
    if limits.cpu_pct <= 0 or limits.ram_mb <= 0 or (limits.temp_c is not None and limits.temp_c <= 0):
        raise TuningError(
            "limits must be positive", "optimize", "pass --cpu PCT --ram MB [--temp C] above zero"
        )
    ratios = {"cpu": usage.cpu_pct / limits.cpu_pct, "ram": usage.ram_mb / limits.ram_mb}
    if usage.temp_c is not None and limits.temp_c is not None:
        ratios["temp"] = usage.temp_c / limits.temp_c
    worst = max(ratios.values())
    profile = (
        "performance"
        if worst <= 0.5
        else "balanced"
        if worst <= 0.8
        else "economy"
        if worst <= 1.0
        else "minimal"
    )
    reasons = [
        f"{k} at {v * 100:.0f}% of its limit" for k, v in sorted(ratios.items(), key=lambda kv: -kv[1])
    ]
    if usage.temp_c is None and limits.temp_c is not None:
        reasons.append("temperature not reported by this machine: ignored")
    return profile, worst, reasons


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node = doc
    *parents, last = dotted.split(".")
    for p in parents:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[last] = value


def apply_profile(doc: dict[str, Any], service: str, profile: str) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    for path, value in PROFILES[profile][service].items():
        set_path(new, path, value)
    return new


def flat_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(path, old, new) for every leaf that differs; what the CLI shows before asking."""
    if isinstance(old, dict) and new is None:
        new = {}
    if isinstance(new, dict) and old is None:
        old = {}
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(old) | set(new)):
            out.extend(flat_diff(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


# ---- measuring the node (impure, small) -----------------------------------------------------------
def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts), idle


def measure_usage(sample_s: float = 0.5, thermal_root: Path = Path("/sys/class/thermal")) -> Usage:
    """Machine CPU busy % over `sample_s`, memory in use (MemTotal - MemAvailable) and the hottest zone."""
    t1, i1 = _cpu_times()
    time.sleep(sample_s)  # a measurement interval, not a wait for a condition
    t2, i2 = _cpu_times()
    cpu = 100.0 * (1 - (i2 - i1) / max(1, t2 - t1))
    mem: dict[str, int] = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            k, v = line.split(":", 1)
            mem[k] = int(v.split()[0])
    ram_mb = (mem["MemTotal"] - mem.get("MemAvailable", mem.get("MemFree", 0))) / 1024
    temps = []
    if thermal_root.is_dir():
        for zone in thermal_root.glob("thermal_zone*/temp"):
            try:
                temps.append(int(zone.read_text().strip()) / 1000)
            except (OSError, ValueError):
                continue
    return Usage(round(cpu, 1), round(ram_mb, 1), max(temps) if temps else None)


# ---- etcd edits ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One service's document before and after a tuning command."""

    service: str
    old: dict[str, Any]
    new: dict[str, Any]

    @property
    def diff(self) -> list[tuple[str, Any, Any]]:
        return flat_diff(self.old, self.new)


def current_document(client: Any, service: str) -> dict[str, Any]:
    from libs.etcd_client.edit import config_key, default_document, service_model

    doc = client.get(config_key(service))
    if doc is None:
        return default_document(service_model(service)[0])
    if not isinstance(doc, dict):
        raise TuningError(
            f"config/{service} is not a JSON object",
            client.full_key(config_key(service)),
            "fix it with mld-config",
        )
    return doc


def commit(
    client: Any,
    service: str,
    mutate: Callable[[dict[str, Any]], dict[str, Any]],
    command: str,
    reason: str,
    retries: int,
) -> Any:
    """CAS-write (re-applying `mutate` on a concurrent change) with an audit entry, via libs.etcd_client."""
    from libs.etcd_client.edit import cas_edit
    from libs.etcd_client.errors import CasConflict

    try:
        return cas_edit(client, service, mutate, command=command, reason=reason, retries=retries)
    except CasConflict:
        raise TuningError(
            f"config/{service} kept changing under the edit",
            client.full_key(f"config/{service}"),
            "retry the command",
        ) from None
