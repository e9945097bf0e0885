"""Models: loading, versioning (sha256), the engine registry and the embedded-sample check.

A model directory `models/<name>/` holds `model.txt` (LightGBM text, the source of truth; its sha256
is the version), `model.onnx` (made by `make train` from the same trees), `sample.json` (a few
feature rows and LightGBM's scores for them) and `card.md`. Loading checks, in order: the file
exists and parses, it is a binary model over exactly `MODEL_FEATURES`, the sha256 matches the
configured version (when one is set), and the chosen engine reproduces the embedded sample within
1e-6. Any failure is a `ModelError` naming the file and the reason; the caller keeps its old set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np

from libs.common.events import FEATURE_NAMES
from services.ml_detector.config import DetectorSettings, Engine
from services.ml_detector.context import CONTEXT_FEATURES
from services.ml_detector.errors import EngineError, ModelError

log = logging.getLogger(__name__)
MODEL_FEATURES: tuple[str, ...] = (*FEATURE_NAMES, *CONTEXT_FEATURES)
SAMPLE_TOLERANCE = 1e-6


class Predictor(Protocol):
    """One engine's compiled form of one model: float64 rows -> malicious probability."""

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class _LightGBM:
    def __init__(self, booster: lgb.Booster, model_dir: Path, cache_dir: Path) -> None:
        self.booster = booster

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)


class _Lleaves:
    def __init__(self, booster: lgb.Booster, model_dir: Path, cache_dir: Path) -> None:
        import lleaves  # compiled trees via LLVM; imported lazily (slow import, optional engine)

        path = model_dir / "model.txt"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.model = lleaves.Model(model_file=str(path))
        self.model.compile(cache=str(cache_dir / f"{digest}.so"))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x, n_jobs=1), dtype=np.float64)


class _Onnx:
    def __init__(self, booster: lgb.Booster, model_dir: Path, cache_dir: Path) -> None:
        import onnxruntime as ort

        path = model_dir / "model.onnx"
        if not path.exists():
            raise EngineError("ONNX model missing", str(path), "run `make train` (it writes model.onnx)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {"input": x})[0]
        return np.asarray(out[:, 0], dtype=np.float64)


ENGINES: dict[str, Callable[[lgb.Booster, Path, Path], Predictor]] = {
    "lightgbm": _LightGBM,
    "lleaves": _Lleaves,
    "onnx": _Onnx,
}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LoadedModel:
    name: str
    path: Path
    version: str  # sha256 of model.txt
    booster: lgb.Booster
    predictor: Predictor
    engine: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predictor.predict(x)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """LightGBM pred_contrib: (n, features + 1) log-odds shares, last column the bias."""
        return np.asarray(self.booster.predict(x, pred_contrib=True, num_threads=1))


def check_checksum(path: Path, text: str) -> None:
    """model.txt must match the model.sha256 written beside it by `make train`."""
    sums = path.with_name("model.sha256")
    try:
        want = sums.read_text().split()[0].strip()
    except (OSError, IndexError):
        raise ModelError(
            "checksum file model.sha256 missing or empty", str(sums), "run `make train`"
        ) from None
    got = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if got != want:
        raise ModelError(
            f"damaged or changed: sha256 {got[:12]}... but model.sha256 says {want[:12]}...",
            str(path),
            "restore the model directory from git or run `make train` (it writes both files)",
        )


def check_structure(path: Path, text: str) -> None:
    """Catch truncation before LightGBM parses: its parser aborts the process on some damage."""
    sizes_line = next((ln for ln in text.splitlines()[:64] if ln.startswith("tree_sizes=")), None)
    n_trees = text.count("\nTree=")
    if sizes_line is None or "\nend of trees" not in text:
        raise ModelError(
            "truncated LightGBM model (no tree_sizes or 'end of trees')", str(path), "run `make train`"
        )
    sizes = [int(v) for v in sizes_line.split("=", 1)[1].split()]
    if len(sizes) != n_trees or sum(sizes) > len(text.encode("utf-8")):
        raise ModelError(
            f"damaged LightGBM model: tree_sizes lists {len(sizes)} trees, {n_trees} present",
            str(path),
            "run `make train`",
        )


def read_booster(path: Path) -> lgb.Booster:
    """Parse a LightGBM text model and check it is a binary model over MODEL_FEATURES."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(
            "model file not found", str(path), "run `make train` or fix models.<name>.path"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read model: {exc}", str(path), "restore the file from git") from None
    if not text.startswith("tree"):
        raise ModelError(
            "not a LightGBM text model (no 'tree' header)", str(path), "restore it or run `make train`"
        )
    check_checksum(path, text)
    check_structure(path, text)
    try:
        booster = lgb.Booster(model_str=text)
    except Exception as exc:  # LightGBM raises LightGBMError or ValueError on damaged text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"corrupt LightGBM model: {first}", str(path), "restore it or run `make train`"
        ) from None
    names = tuple(booster.feature_name())
    if names != MODEL_FEATURES:
        missing = [n for n in MODEL_FEATURES if n not in names][:3]
        extra = [n for n in names if n not in MODEL_FEATURES][:3]
        raise ModelError(
            f"incompatible model: {len(names)} features, expected {len(MODEL_FEATURES)}"
            f" (missing {missing}, unknown {extra})",
            str(path),
            "retrain with this version's `make train`",
        )
    objective = booster.dump_model(num_iteration=1).get("objective", "")
    if not str(objective).startswith("binary"):
        raise ModelError(
            f"incompatible model: objective {objective!r}, expected binary", str(path), "retrain"
        )
    return booster


def load_model(name: str, model_dir: Path, engine: Engine, cache_dir: Path, version: str = "") -> LoadedModel:
    """Load, verify and compile one model; ModelError/EngineError say which file and why."""
    path = model_dir / "model.txt"
    booster = read_booster(path)
    digest = sha256_file(path)
    if version and version != digest:
        raise ModelError(
            f"version mismatch: file is sha256 {digest[:12]}..., settings expect {version[:12]}...",
            str(path),
            "set models.<name>.version to the new sha256 or restore the expected file",
        )
    try:
        predictor = ENGINES[engine](booster, model_dir, cache_dir)
    except (EngineError, ModelError):
        raise
    except Exception as exc:
        raise EngineError(
            f"engine {engine} cannot load the model: {exc}", str(path), "use engine lightgbm"
        ) from None
    check_sample(name, model_dir, booster, predictor, engine)
    return LoadedModel(name, path, digest, booster, predictor, engine)


def check_sample(name: str, model_dir: Path, booster: lgb.Booster, predictor: Predictor, engine: str) -> None:
    """The engine must reproduce the stored scores of the embedded sample (and LightGBM's own)."""
    path = model_dir / "sample.json"
    try:
        sample = json.loads(path.read_text())
        x = np.asarray(sample["inputs"], dtype=np.float64)
        want = np.asarray(sample["scores"], dtype=np.float64)
    except FileNotFoundError:
        raise ModelError(
            "embedded sample missing", str(path), "run `make train` (it writes sample.json)"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"embedded sample unreadable: {exc}", str(path), "run `make train`") from None
    if x.ndim != 2 or x.shape[1] != len(MODEL_FEATURES) or len(want) != len(x):
        raise ModelError(
            f"embedded sample has shape {x.shape}, expected (n, {len(MODEL_FEATURES)})", str(path), ""
        )
    got = predictor.predict(x)
    worst = float(np.max(np.abs(got - want))) if len(x) else 0.0
    if worst > SAMPLE_TOLERANCE:
        raise EngineError(
            f"engine {engine} disagrees with the embedded sample of model {name} by {worst:.3g}",
            str(path),
            "the model file and sample.json do not belong together, or the engine is broken: retrain or use lightgbm",
        )


@dataclass(frozen=True)
class ModelSet:
    """The enabled models under one engine; immutable, swapped whole."""

    engine: str
    models: dict[str, LoadedModel] = field(default_factory=dict)

    @property
    def versions(self) -> dict[str, str]:
        return {k: m.version for k, m in self.models.items()}

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {k: m.predict(x) for k, m in self.models.items()}


def model_dir_for(settings: DetectorSettings, name: str) -> Path:
    p = Path(settings.models[name].path)
    if not p.is_absolute():
        p = Path(settings.models_dir) / p
    return p.parent if p.suffix == ".txt" else p


def load_model_set(settings: DetectorSettings, previous: ModelSet | None = None) -> ModelSet:
    """Every enabled model under `settings.engine`; models whose file is unchanged are reused."""
    cache = Path(settings.engine_cache_dir)
    out: dict[str, LoadedModel] = {}
    for name, ms in settings.models.items():
        if not ms.enabled:
            continue
        d = model_dir_for(settings, name)
        engine = ms.engine or settings.engine
        old = previous.models.get(name) if previous else None
        if old is not None and old.engine == engine and old.path == d / "model.txt":
            try:
                if sha256_file(old.path) == old.version and (not ms.version or ms.version == old.version):
                    out[name] = old
                    continue
            except OSError:
                pass
        out[name] = load_model(name, d, engine, cache, ms.version)
    return ModelSet(settings.engine, out)


def describe(models: ModelSet) -> list[dict[str, Any]]:
    return [
        {"name": k, "version": m.version, "path": str(m.path), "engine": m.engine}
        for k, m in models.models.items()
    ]
