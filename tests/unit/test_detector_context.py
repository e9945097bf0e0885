"""Per-source context features: what they count, the window, and the bounded state."""

from __future__ import annotations

import pytest

from libs.common.events import ip_bytes
from ml_defender.v1 import flow_pb2
from services.ml_detector.context import CONTEXT_FEATURES, ContextTracker

IDX = {n: i for i, n in enumerate(CONTEXT_FEATURES)}


def rec(
    src: str, dst: str, dport: int, t_s: float, answered: bool = True, nbytes: int = 2500
) -> flow_pb2.FlowRecord:
    r = flow_pb2.FlowRecord(first_seen_ns=int(t_s * 1e9))
    r.key.src_addr = ip_bytes(src)
    r.key.dst_addr = ip_bytes(dst)
    r.key.dst_port = dport
    r.key.protocol = 6
    r.features.src2dst_bytes = nbytes
    r.features.dst2src_packets = 5 if answered else 0
    return r


@pytest.mark.unit
def test_repeated_attempts_are_counted_and_regular() -> None:
    t = ContextTracker(window_s=60)
    recs = [rec("198.18.1.200", "198.18.0.5", 22, 100 + 5 * i) for i in range(11)]
    x = t.features(recs)
    assert list(x[:, IDX["src_window_same_dst_flows"]]) == [float(i + 1) for i in range(11)]
    assert x[-1, IDX["src_window_same_dst_interval_cv"]] == pytest.approx(0.0)
    assert x[-1, IDX["src_window_same_dst_port_bytes_cv"]] == pytest.approx(0.0)
    assert x[0, IDX["src_window_same_dst_interval_cv"]] == 1.0  # too few flows to show regularity


@pytest.mark.unit
def test_window_and_sources_are_separate() -> None:
    t = ContextTracker(window_s=10)
    a = t.features(
        [rec("198.18.1.1", "198.18.0.5", 22, 0), rec("198.18.1.1", "198.18.0.6", 80, 5, answered=False)]
    )
    assert a[1, IDX["src_window_flows"]] == 2
    assert a[1, IDX["src_window_distinct_dst_addrs"]] == 2
    assert a[1, IDX["src_window_unanswered_ratio"]] == 0.5
    b = t.features([rec("198.18.1.2", "198.18.0.5", 22, 6), rec("198.18.1.1", "198.18.0.5", 22, 30)])
    assert b[0, IDX["src_window_flows"]] == 1  # another source
    assert b[1, IDX["src_window_flows"]] == 1  # older flows fell out of the 10 s window


@pytest.mark.unit
def test_state_is_bounded() -> None:
    t = ContextTracker(window_s=60, max_sources=16, max_flows_per_source=8)
    t.features([rec(f"198.18.2.{i}", "198.18.0.5", 80, i * 0.01) for i in range(100)])
    assert len(t) == 16
    x = t.features([rec("198.18.3.1", "198.18.0.5", 80, 1 + i * 0.01) for i in range(50)])
    assert x[-1, IDX["src_window_flows"]] == 8  # at most 8 flows per source, this one included
