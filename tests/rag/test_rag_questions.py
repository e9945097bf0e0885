"""The labelled question set over its generated corpus, the embedder against the original model, and
rebuilding a deleted or corrupt index with the same answers. Real model, no sockets."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rag_questions import answers, build_corpus, load, now_ns, precision_at_10, settings

from services.rag.core import RagCore
from services.rag.embedder import Embedder
from services.rag.store import DB_NAME

REFERENCE = Path(__file__).with_name("minilm_reference.json")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder
) -> Iterator[tuple[Path, RagCore, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("rag-questions")
    data = load()
    build_corpus(tmp / "artifacts", data["corpus"])
    core = RagCore(settings(tmp), embedder)
    core.catch_up()
    yield tmp, core, data
    core.close()


@pytest.mark.integration
def test_embedder_matches_the_original_model(embedder: Embedder) -> None:
    ref = json.loads(REFERENCE.read_text())
    got = embedder.embed(ref["sentences"])
    want = np.asarray(ref["vectors"], dtype=np.float32)
    cos = (got * want).sum(axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99, cos
    # Batching and deduplication do not change a vector.
    again = embedder.embed([ref["sentences"][1], ref["sentences"][0], ref["sentences"][1]])
    assert np.allclose(again[0], got[1], atol=1e-5) and np.allclose(again[1], got[0], atol=1e-5)


@pytest.mark.integration
def test_question_set_shape() -> None:
    qs = load()["questions"]
    texts = {q["question"] for q in qs}
    assert len(qs) >= 30
    assert {
        "Show me high divergence events from yesterday",
        "Find botnet-like behavior",
        "Fast detector triggered but ML disagreed",
    } <= texts


@pytest.mark.integration
def test_filter_questions_precision_at_10(corpus: tuple[Path, RagCore, dict[str, Any]]) -> None:
    _tmp, core, data = corpus
    now = now_ns(data["corpus"])
    bad = {}
    for q in data["questions"]:
        if q["kind"] == "filter":
            p, got = precision_at_10(core, q, now)
            if p < data["targets"]["filter_precision_at_10"]:
                bad[q["question"]] = (p, got)
    assert not bad, bad


@pytest.mark.integration
def test_semantic_questions_precision_at_10(corpus: tuple[Path, RagCore, dict[str, Any]]) -> None:
    """Stated figure (README): mean 0.90 over the 10 semantic questions; the floor here is 0.8."""
    _tmp, core, data = corpus
    now = now_ns(data["corpus"])
    ps = {
        q["question"]: precision_at_10(core, q, now)[0] for q in data["questions"] if q["kind"] == "semantic"
    }
    assert sum(ps.values()) / len(ps) >= 0.8, ps
    assert ps["Find botnet-like behavior"] >= 0.9, ps


@pytest.mark.integration
def test_deleted_or_corrupt_index_is_rebuilt_with_the_same_answers(
    corpus: tuple[Path, RagCore, dict[str, Any]], embedder: Embedder
) -> None:
    tmp, core, data = corpus
    before = answers(core, data)
    s = settings(tmp / "copy")
    shutil.copytree(tmp / "index", tmp / "copy" / "index")
    (tmp / "copy" / "artifacts").symlink_to(tmp / "artifacts")
    # Deleted: a fresh index from the artifacts.
    shutil.rmtree(tmp / "copy" / "index")
    rebuilt = RagCore(s, embedder)
    assert rebuilt.catch_up().added == data["corpus"]["events"]
    assert answers(rebuilt, data) == before
    rebuilt.close()
    # Corrupt SQLite: moved aside and rebuilt.
    db = tmp / "copy" / "index" / DB_NAME
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    raw = bytearray(db.read_bytes())
    raw[0:100] = b"\x00" * 100
    db.write_bytes(bytes(raw))
    repaired = RagCore(s, embedder)
    assert repaired.rebuilt_reason
    repaired.catch_up()
    assert answers(repaired, data) == before
    repaired.close()
