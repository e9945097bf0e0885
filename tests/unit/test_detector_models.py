"""Model management: missing, corrupt, incompatible or mismatched models are refused with the file
and the reason; unchanged models are reused on reload. Uses copies of the committed models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from services.ml_detector.config import MODEL_NAMES, DetectorSettings
from services.ml_detector.errors import EngineError, ModelError
from services.ml_detector.models import MODEL_FEATURES, load_model_set, sha256_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    for name in MODEL_NAMES:
        shutil.copytree(
            REPO / "models" / name, tmp_path / name, ignore=shutil.ignore_patterns("*.onnx", "card.md")
        )
    return tmp_path


def settings(models_dir: Path, **kw: object) -> DetectorSettings:
    return DetectorSettings.model_validate({"models_dir": str(models_dir), **kw})


@pytest.mark.unit
def test_committed_models_load_and_match_their_samples(models_dir: Path) -> None:
    ms = load_model_set(settings(models_dir))
    assert sorted(ms.models) == sorted(MODEL_NAMES)
    for name, m in ms.models.items():
        assert m.version == sha256_file(models_dir / name / "model.txt")
        x = np.asarray(json.loads((models_dir / name / "sample.json").read_text())["inputs"])
        assert m.predict(x).shape == (len(x),)


@pytest.mark.unit
def test_missing_model_names_the_file(models_dir: Path) -> None:
    (models_dir / "ddos" / "model.txt").unlink()
    with pytest.raises(ModelError) as exc:
        load_model_set(settings(models_dir))
    assert "ddos/model.txt" in exc.value.message and "not found" in exc.value.message


@pytest.mark.unit
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_model_is_refused(models_dir: Path, damage: str) -> None:
    path = models_dir / "traffic" / "model.txt"
    text = path.read_text()
    path.write_text("\x00\x01 not a model" if damage == "garbage" else text[: len(text) // 2])
    with pytest.raises((ModelError, EngineError)) as exc:
        load_model_set(settings(models_dir))
    assert "traffic" in exc.value.message


@pytest.mark.unit
def test_damage_behind_a_matching_checksum_is_caught_before_lightgbm_parses(models_dir: Path) -> None:
    path = models_dir / "traffic" / "model.txt"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    (models_dir / "traffic" / "model.sha256").write_text(sha256_file(path) + "  model.txt\n")
    with pytest.raises(ModelError, match="truncated LightGBM model"):
        load_model_set(settings(models_dir))


@pytest.mark.unit
def test_incompatible_feature_list_is_refused(models_dir: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 5)), rng.integers(0, 2, 200)
    b = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), 3)
    b.save_model(str(models_dir / "internal" / "model.txt"))
    path = models_dir / "internal" / "model.txt"
    (models_dir / "internal" / "model.sha256").write_text(sha256_file(path) + "  model.txt\n")
    with pytest.raises(ModelError, match="incompatible model: 5 features"):
        load_model_set(settings(models_dir))


@pytest.mark.unit
def test_sample_disagreement_and_version_pin(models_dir: Path) -> None:
    sample = models_dir / "ransomware" / "sample.json"
    doc = json.loads(sample.read_text())
    doc["scores"][0] = doc["scores"][0] + 0.01
    sample.write_text(json.dumps(doc))
    with pytest.raises(EngineError, match="disagrees with the embedded sample"):
        load_model_set(settings(models_dir))
    shutil.copy(REPO / "models" / "ransomware" / "sample.json", sample)
    pinned = {"ddos": {"path": "ddos/model.txt", "version": "0" * 64}}
    with pytest.raises(ModelError, match="version mismatch"):
        load_model_set(settings(models_dir, models=pinned))


@pytest.mark.unit
def test_reload_reuses_unchanged_models_and_keeps_features(models_dir: Path) -> None:
    s = settings(models_dir)
    first = load_model_set(s)
    second = load_model_set(s, previous=first)
    assert all(second.models[k] is first.models[k] for k in MODEL_NAMES)
    assert len(MODEL_FEATURES) == 62
