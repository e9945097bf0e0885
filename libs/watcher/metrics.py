"""Metrics of live configuration, one set per service name: `mld_<service>_config_*`, `mld_<service>_etcd_*`."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge

_lock = threading.Lock()
C = TypeVar("C", Counter, Gauge)


def _metric(cls: type[C], name: str, doc: str, labels: tuple[str, ...] = ()) -> C:
    """Create a metric, or reuse the one a service already registered under that name
    (e.g. the detector's own `mld_ml_detector_config_revision`): one time series, two writers."""
    existing: Any = REGISTRY._names_to_collectors.get(name)  # no public lookup exists
    if isinstance(existing, cls):
        return existing
    return cls(name, doc, list(labels))


@dataclass(frozen=True)
class ConfigMetrics:
    reloads: Counter
    revision: Gauge
    source: Gauge
    etcd_connected: Gauge
    pending_restart: Gauge


_cache: dict[str, ConfigMetrics] = {}
SOURCES = ("etcd", "cache", "file", "defaults")


def config_metrics(service: str) -> ConfigMetrics:
    """The metrics of `service` (e.g. `ml-detector` -> `mld_ml_detector_config_reloads_total`)."""
    name = service.replace("-", "_")
    with _lock:
        if name not in _cache:
            _cache[name] = ConfigMetrics(
                reloads=_metric(
                    Counter,
                    f"mld_{name}_config_reloads",
                    "Configuration documents handled, by result",
                    ("result",),
                ),
                revision=_metric(
                    Gauge, f"mld_{name}_config_revision", "etcd revision of the applied configuration"
                ),
                source=_metric(
                    Gauge,
                    f"mld_{name}_config_source",
                    "Where the running configuration came from (1 for the current source)",
                    ("source",),
                ),
                etcd_connected=_metric(
                    Gauge, f"mld_{name}_etcd_connected", "1 while the etcd watch is connected"
                ),
                pending_restart=_metric(
                    Gauge,
                    f"mld_{name}_config_pending_restart_fields",
                    "Changed restart-required fields waiting for a restart",
                ),
            )
            for result in ("applied", "rejected", "rolled_back"):
                _cache[name].reloads.labels(result)
        return _cache[name]
