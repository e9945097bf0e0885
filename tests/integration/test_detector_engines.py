"""The three inference engines give LightGBM's scores within 1e-6 on held-out data: the flows of
the public captures and two generated held-out captures (never trained on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.ml_detector.config import DetectorSettings
from services.ml_detector.context import ContextTracker
from services.ml_detector.detector import feature_matrix
from services.ml_detector.models import load_model_set

REPO = Path(__file__).resolve().parents[2]


def held_out_rows(shared: Path, tmp: Path) -> np.ndarray:
    from services.ml_detector.train.generate import Planned, generate
    from services.sniffer.flows import extract_flows

    generate(
        tmp, [Planned("gen-portscan-3", "portscan", 3, "test"), Planned("gen-benign-8", None, 8, "test")]
    )
    files = sorted(shared.glob("*.pcap*")) + sorted(tmp.glob("*.pcap"))
    rows = []
    for f in files:
        recs = extract_flows([f]).records
        if recs:
            rows.append(feature_matrix(recs, ContextTracker()))
    return np.vstack(rows)


@pytest.mark.integration
def test_engines_agree_within_1e_6(shared_pcaps: Path, tmp_path: Path) -> None:
    x = held_out_rows(shared_pcaps, tmp_path)
    assert len(x) > 1000
    cache = REPO / "var" / "cache" / "ml_detector"  # lleaves compiles once per model version (~30 s)
    sets = {
        e: load_model_set(DetectorSettings(engine=e, engine_cache_dir=str(cache)))
        for e in ("lightgbm", "lleaves", "onnx")
    }
    base = sets["lightgbm"].predict(x)
    for engine in ("lleaves", "onnx"):
        got = sets[engine].predict(x)
        for name, want in base.items():
            worst = float(np.max(np.abs(got[name] - want)))
            assert worst <= 1e-6, f"{engine} {name}: max |diff| {worst:.3g}"
        one = sets[engine].predict(x[:1])  # batch size 1 takes the same path
        assert all(abs(float(one[k][0]) - float(base[k][0])) <= 1e-6 for k in base)
