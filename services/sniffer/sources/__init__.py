"""Capture sources behind one small protocol, chosen by name from `capture.source`.

Each source turns packets into exported FlowRecords; the service does not care where packets
come from. Sources are imported lazily so that `pcap` works where XDP or AF_PACKET cannot load.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from libs.common.lifecycle import StopFlag
from ml_defender.v1 import flow_pb2
from services.sniffer.errors import SourceError

if TYPE_CHECKING:
    from services.sniffer.config import SnifferSettings


class FlowSource(Protocol):
    """Yields batches of exported flow records until done or `stop` is set (then flushes)."""

    name: str

    def batches(self, stop: StopFlag) -> Iterator[list[flow_pb2.FlowRecord]]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


SOURCES: dict[str, str] = {
    "pcap": "services.sniffer.sources.pcap:PcapSource",
    "afpacket": "services.sniffer.sources.afpacket:AfPacketSource",
    "xdp": "services.sniffer.sources.xdp:XdpSource",
}


def source_class(name: str) -> type[FlowSource]:
    """The class registered under `name`, imported on first use."""
    try:
        target = SOURCES[name]
    except KeyError:
        raise SourceError(
            f"unknown capture source {name!r}", "capture.source", f"use one of {', '.join(sorted(SOURCES))}"
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceError(
            f"capture source {name!r} cannot be loaded: {exc}", "capture.source", "use capture.source=pcap"
        ) from None
    cls: type[FlowSource] = getattr(module, attr)
    return cls


def open_source(settings: SnifferSettings) -> FlowSource:
    """Construct the configured source as Cls(settings)."""
    return source_class(settings.capture.source)(settings)  # type: ignore[call-arg]
