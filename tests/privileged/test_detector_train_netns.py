"""Real-tool training captures: a few seconds of nmap and benign curl/DNS/SSH-like traffic in
namespaces of this test's own, captured on the victim's bridge, extracted by the sniffer's code and
labelled by the namespace address that sent each flow; both extraction variants; nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import lightgbm as lgb
import pytest

from services.ml_detector.config import MODEL_NAMES
from services.ml_detector.train import netns_capture as nc
from services.ml_detector.train.dataset import LIVE_SUFFIX, load_netns
from services.ml_detector.train.train import short_benign_flows

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.privileged


def test_tiny_namespace_capture_is_labelled_by_sender(require_root: None, tmp_path: Path) -> None:
    why = nc.unavailable()
    if why is not None:
        pytest.skip(f"real-tool captures unavailable: {why}")
    names = nc.Names.for_pid(os.getpid() * 10 + 7)  # not the training run's names
    plan = nc.NsPlan("ns-tiny-0", 0, "test", 15.0, kinds=("portscan", "connect_scan"))
    try:
        labels = nc.generate(tmp_path, [plan], names)
    finally:
        nc.destroy(names)
    assert not any(n in os.listdir("/run/netns") for n in names.all()), "namespaces left behind"
    (lb,) = labels
    assert sorted(lb["attackers"].values()) == ["connect_scan", "portscan"]
    assert all(code in (0, -9) for k in ("portscan", "connect_scan") for code in lb["tool_exits"][k])

    default, live = load_netns(tmp_path)
    assert live.name == default.name + LIVE_SUFFIX
    for cap in (default, live):
        by_src = {str(s): {str(k) for k in cap.kind[cap.src == s]} for s in set(cap.src)}
        for src, kinds in by_src.items():  # a label is the sender's, nothing else
            assert kinds == {lb["attackers"].get(src, "")}, (src, kinds)
        assert set(by_src) <= set(lb["attackers"]) | set(lb["benign"])
        assert not any(s.startswith("198.18.0.") for s in by_src), "victim-initiated flows must be left out"
        counts = {k: int((cap.kind == k).sum()) for k in ("portscan", "connect_scan", "")}
        assert counts["portscan"] >= 100 and counts["connect_scan"] >= 100, counts
        assert counts[""] >= 5, counts  # the benign users' flows are there, labelled benign
    # The live sniffer's settings (no close linger, 0.1 s half-open timeout) cut more flows: trailing
    # ACKs and late RSTs of their own, which training must see as what their sender is.
    assert len(live.x) > len(default.x)

    # ... and the committed models, trained on both variants, leave a benign user's trailing ACKs
    # alone (models trained without the live variant flagged most of them and blocked the client).
    boosters = {m: lgb.Booster(model_file=str(REPO / "models" / m / "model.txt")) for m in MODEL_NAMES}
    short = short_benign_flows(boosters, [live])["trailing_ack"]
    assert short["flows"] >= 3, short
    assert short["flagged"] <= max(1, short["flows"] // 10), short
