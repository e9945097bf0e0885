"""The Prometheus `/metrics` endpoint and the metrics every service shares.

Names follow `mld_<service>_<thing>_<unit>` with `_total` for counters. Service-specific metrics
live in each service's own `metrics.py`; the ones here (ZeroMQ traffic, build info, up-time) are
created once per service name so that tests can build several services in one process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Info, start_http_server

from libs.common.errors import ConfigError

log = logging.getLogger(__name__)
_lock = threading.Lock()


@dataclass(frozen=True)
class TransportMetrics:
    """ZeroMQ traffic of one service, by endpoint."""

    sent: Counter
    received: Counter
    dropped: Counter
    decode_errors: Counter


_transport: dict[str, TransportMetrics] = {}
_info: dict[str, Info] = {}


def transport_metrics(service: str) -> TransportMetrics:
    """The ZeroMQ counters of `service`, created on first use."""
    name = service.replace("-", "_")
    with _lock:
        if name not in _transport:
            _transport[name] = TransportMetrics(
                sent=Counter(f"mld_{name}_zmq_sent_messages", "Messages sent", ["endpoint"]),
                received=Counter(f"mld_{name}_zmq_received_messages", "Messages received", ["endpoint"]),
                dropped=Counter(
                    f"mld_{name}_zmq_dropped_messages",
                    "Messages dropped because the peer's queue stayed full (high-water mark)",
                    ["endpoint", "reason"],
                ),
                decode_errors=Counter(
                    f"mld_{name}_zmq_decode_errors",
                    "Messages that could not be decoded",
                    ["endpoint", "type"],
                ),
            )
        return _transport[name]


def build_info(service: str, version: str, node: str) -> None:
    """Publish `mld_<service>_build_info{version,node}`."""
    name = service.replace("-", "_")
    with _lock:
        if name not in _info:
            _info[name] = Info(f"mld_{name}_build", "Build and node of the running service")
    _info[name].info({"version": version, "node": node})


def start_metrics_server(host: str, port: int) -> WSGIServer | None:
    """Serve `/metrics` on host:port in a daemon thread; port 0 disables the endpoint."""
    if port == 0:
        return None
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve /metrics on {host}:{port}: {exc.strerror}",
            "metrics.port",
            "choose a free port or stop the process that holds it",
        ) from None
    log.info("metrics endpoint listening", extra={"url": f"http://{host}:{port}/metrics"})
    return server


def gauge(name: str, doc: str, labels: list[str] | None = None) -> Gauge:
    return Gauge(name, doc, labels or [])
