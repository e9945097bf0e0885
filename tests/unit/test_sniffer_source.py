"""The pcap source and the service's settings swap, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.lifecycle import StopFlag
from services.sniffer.app import SnifferApp
from services.sniffer.config import SnifferSettings
from services.sniffer.errors import SnifferError, SourceError
from services.sniffer.sources import SOURCES, open_source, source_class
from services.sniffer.sources.pcap import PcapSource
from services.sniffer.testing import ether, ipv4, tcp, udp, write_pcap

pytestmark = pytest.mark.unit
T0 = 1_700_000_000 * 10**9


def cfg(paths: list[str], **capture: object) -> SnifferSettings:
    return SnifferSettings.model_validate(
        {"node_id": "u", "capture": {"pcap_paths": paths, **capture}, "metrics": {"port": 0}}
    )


@pytest.fixture
def pcap(tmp_path: Path) -> Path:
    frames = [ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000 + i, 80, "S"))) for i in range(5)]
    frames.append(ether(ipv4("10.0.0.3", "10.0.0.4", 17, udp(1, 2))))
    return write_pcap(tmp_path / "a.pcap", frames, [T0 + i * 10**6 for i in range(6)])


def collect(src: PcapSource, stop: StopFlag | None = None) -> list:  # type: ignore[type-arg]
    return [r for batch in src.batches(stop or StopFlag()) for r in batch]


def test_registry_names_and_lazy_import() -> None:
    assert set(SOURCES) == {"pcap", "afpacket", "xdp"}
    assert source_class("pcap") is PcapSource
    with pytest.raises(SourceError, match="unknown capture source"):
        source_class("tap")
    assert isinstance(open_source(cfg([])), PcapSource)


def test_fast_pass_gives_every_flow(pcap: Path) -> None:
    src = PcapSource(cfg([str(pcap)], chunk_packets=2))
    recs = collect(src)
    assert len(recs) == 6 and src.stats()["packets"] == 6 and src.stats()["flows"] == 6
    assert all(r.interface == "a.pcap" for r in recs)


def test_loop_moves_time_forward_and_bad_files_are_counted(pcap: Path, tmp_path: Path) -> None:
    stop = StopFlag()
    src = PcapSource(cfg([str(tmp_path / "missing.pcap"), str(pcap)], loop=True))
    seen: list = []  # type: ignore[type-arg]
    for batch in src.batches(stop):
        seen.extend(batch)
        if len(seen) >= 12:
            stop.set("test")
    first, second = seen[:6], seen[6:12]
    assert min(r.first_seen_ns for r in second) > max(r.last_seen_ns for r in first)
    assert src.stats()["file_errors"] >= 1 and src.last_error is not None
    assert "not found" in src.last_error.message


def test_loop_with_only_bad_files_ends(tmp_path: Path) -> None:
    src = PcapSource(cfg([str(tmp_path / "missing.pcap")], loop=True))
    assert collect(src) == [] and src.stats()["file_errors"] == 1


def test_realtime_pace_follows_the_capture_clock(pcap: Path) -> None:
    src = PcapSource(cfg([str(pcap)], pace="realtime", speed=1.0))
    assert len(collect(src)) == 6  # 5 ms of capture time: quick even at real pace


def test_rebase_time_starts_now(pcap: Path) -> None:
    import time

    before = time.time_ns()
    recs = collect(PcapSource(cfg([str(pcap)], rebase_time=True)))
    assert min(r.first_seen_ns for r in recs) >= before


def test_app_swaps_hot_settings_and_refuses_cold_ones(pcap: Path) -> None:
    base = cfg([str(pcap)])
    app = SnifferApp(base)
    hot = base.model_copy(
        update={"fast_detector": base.fast_detector.model_copy(update={"distinct_ports_threshold": 3})}
    )
    assert app.update_settings(hot) == ["fast_detector.distinct_ports_threshold"]
    assert app.detector.settings.distinct_ports_threshold == 3 and app.settings is hot
    cold = hot.model_copy(update={"capture": hot.capture.model_copy(update={"source": "xdp"})})
    with pytest.raises(SnifferError, match=r"restart required for capture\.source"):
        app.update_settings(cold)
    assert app.settings is hot
