"""Training smoke test on tiny data: the pipeline runs end to end, is reproducible (same bytes for
the same seeds), and what it writes loads under every engine. The committed models are not touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.ml_detector.config import MODEL_NAMES, DetectorSettings
from services.ml_detector.models import load_model_set, sha256_file
from services.ml_detector.train import netns_capture
from services.ml_detector.train.dataset import load_generated
from services.ml_detector.train.generate import Planned, make_capture
from services.ml_detector.train.train import TrainConfig, fit, run


@pytest.mark.integration
def test_quick_training_is_reproducible_and_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, work = tmp_path / "models", tmp_path / "work"
    cfg = TrainConfig(rounds=8)
    # Real-tool captures asked for but impossible here: a loud fallback, stated in every card.
    monkeypatch.setattr(netns_capture, "unavailable", lambda: "test: pretend there is no root")
    report = run(out, work, None, cfg, quick=True, netns=True)
    assert report["netns"] == {"used": False, "reason": "test: pretend there is no root"}
    assert sorted(report["models"]) == sorted(MODEL_NAMES)
    assert all(d["sha256"] and d["flows"] > 0 for d in report["data"])
    for name in MODEL_NAMES:
        card = (out / name / "card.md").read_text()
        assert "Held-out metrics" in card and report["models"][name]["sha256"] in card
        assert "No real-tool captures in this training run** (test: pretend there is no root)" in card

    # same plan, same seed -> the same capture bytes and the same model text
    labels = json.loads((work / "captures" / "labels.json").read_text())
    again = make_capture(Planned("gen-portscan-0", "portscan", 0, "train"), tmp_path)
    assert again["sha256"] == next(x["sha256"] for x in labels if x["file"] == "gen-portscan-0.pcap")
    caps = [c for c in load_generated(work / "captures") if c.split == "train"]
    assert fit(caps, "traffic", cfg).model_to_string() == (out / "traffic" / "model.txt").read_text()

    for engine in ("lightgbm", "onnx", "lleaves"):
        s = DetectorSettings(models_dir=str(out), engine=engine, engine_cache_dir=str(tmp_path / "cache"))
        ms = load_model_set(s)
        assert ms.versions["ddos"] == sha256_file(out / "ddos" / "model.txt")


@pytest.mark.integration
def test_namespace_plan_is_unique_bounded_and_in_test_ranges() -> None:
    """Names carry the pid (parallel runs never collide), addresses stay in 198.18.0.0/15 and
    2001:db8::/32, the real traffic stays within a few minutes and some captures are held out."""
    import ipaddress

    a, b = netns_capture.Names.for_pid(101), netns_capture.Names.for_pid(102)
    assert not set(a.all()) & set(b.all()) and all(len(n) <= 32 for n in a.all())
    nets = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")]
    for cmd in netns_capture.topology_commands(a):
        for word in cmd:
            try:
                addr = ipaddress.ip_interface(word).ip
            except ValueError:
                continue
            assert any(addr in n for n in nets if n.version == addr.version), cmd
    plans = netns_capture.plan()
    assert sum(p.duration_s for p in plans) <= 240
    assert {p.split for p in plans if p.attacks} == {"train", "test"}
    assert {p.split for p in plans if not p.attacks} == {"train", "test"}
    assert len(set(netns_capture.attacker_addresses())) >= 3 * len(netns_capture.ATTACK_KINDS)
