"""Store and ingest without the model (a hashing fake embedder): pairs, damage, checkpoint, repair."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.rag.corpus import CorpusGenerator, write_corpus, write_pair
from services.rag.embedder import DIM
from services.rag.filters import Filters, ip_key, net_range, where_sql
from services.rag.ingest import ArtifactFollower
from services.rag.store import FAISS_NAME, EventStore


def fake_embed(texts: list[str]) -> np.ndarray:
    """Unit vectors from a hash of the text: identical texts, identical vectors."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        out[i] = v / np.linalg.norm(v)
    return out


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventStore]:
    tmp = tmp_path_factory.mktemp("rag-index")
    write_corpus(tmp / "art", 250, seed=4)
    f = follower(tmp / "art", tmp / "ix")
    f.poll()
    yield f.store
    f.store.close()


def follower(root: Path, ix: Path, **kw: int) -> ArtifactFollower:
    store = EventStore(ix, **kw)
    return ArtifactFollower(root, store, fake_embed, full_rescan_s=0.0)


@pytest.mark.unit
def test_ingest_once_and_never_twice(tmp_path: Path) -> None:
    gen = write_corpus(tmp_path / "art", 200, seed=3)
    f = follower(tmp_path / "art", tmp_path / "ix")
    r = f.poll()
    assert r.added == 200 and not r.damaged
    assert f.poll().added == 0
    st = f.store.stats()
    assert st["events"] == 200
    # Bucketed texts: the embedder runs, and FAISS holds a vector, once per distinct text.
    assert st["index_vectors"] == st["distinct_texts"] < 100
    f.store.close()
    # A restart reads the checkpoint: nothing is ingested again, the snapshot is reused.
    f2 = follower(tmp_path / "art", tmp_path / "ix")
    assert not f2.store.faiss_rebuilt
    assert f2.poll().added == 0 and f2.store.count() == 200
    assert {g.event.event_id for g in gen} == {f2.store.rows([i])[i]["event_id"] for i in range(1, 201)}
    f2.store.close()


@pytest.mark.unit
def test_damaged_pairs_are_skipped_and_reported_once(tmp_path: Path) -> None:
    root = tmp_path / "art"
    gen = CorpusGenerator(seed=5).generate(6)
    paths = [write_pair(root, g.event) for g in gen]
    paths[0][1].write_text("{not json")  # broken JSON
    paths[1][0].write_bytes(b"\xff\xff\xff")  # .pb garbage
    doc = json.loads(paths[2][1].read_text())
    doc["event_id"] = gen[3].event.event_id  # the twins disagree
    paths[2][1].write_text(json.dumps(doc))
    paths[3][0].unlink()  # only the .json: not complete yet, not damaged
    day = paths[4][0].parent
    (day / ".event_x.json.tmp").write_text("partial")
    (day / "config_123.json").write_text("{}")
    (day / "events-2026-03-10.jsonl").write_text("")
    f = follower(root, tmp_path / "ix")
    r = f.poll()
    assert r.added == 2
    reasons = sorted(reason for _p, reason in r.damaged)
    assert len(reasons) == 3
    assert any("not valid JSON" in x for x in reasons) and any("ids disagree" in x for x in reasons)
    assert any(".pb" in x for x in reasons)
    assert r.pending == 1
    assert not f.poll().damaged  # reported once
    write_pair(root, gen[3].event)  # the missing twin arrives
    assert f.poll().added == 1
    write_pair(root, gen[0].event)  # a damaged pair rewritten correctly is picked up
    assert f.poll().added == 1
    assert f.store.stats()["damaged_files"] >= 2
    f.store.close()


@pytest.mark.unit
def test_corrupt_or_stale_faiss_snapshot_is_rebuilt_from_sqlite(tmp_path: Path) -> None:
    write_corpus(tmp_path / "art", 120, seed=9)
    f = follower(tmp_path / "art", tmp_path / "ix")
    f.poll()
    f.store.save()
    q = fake_embed(["x"])[0]
    before = f.store.semantic(q, Filters(), 20)
    texts = f.store.text_count()
    f.store.close()
    (tmp_path / "ix" / FAISS_NAME).write_bytes(b"garbage")
    s2 = EventStore(tmp_path / "ix")
    assert s2.faiss_rebuilt and s2.index.ntotal == texts
    assert s2.semantic(q, Filters(), 20) == before
    s2.close()


@pytest.mark.unit
def test_hnsw_above_the_size_threshold_and_filtered_search(tmp_path: Path) -> None:
    write_corpus(tmp_path / "art", 100, seed=2)
    f = follower(tmp_path / "art", tmp_path / "ix", hnsw_min_texts=10)
    f.poll()
    f.store.save()
    assert f.store.kind == "hnsw"
    flt = Filters(classifications=["CONSENSUS"])
    cand = set(f.store.filter_rowids(flt).tolist())
    q = fake_embed(["y"])[0]
    hits = f.store.semantic(q, flt, 10)
    assert len(hits) == 10 and {r for r, _ in hits} <= cand
    # Same answer as a brute-force ranking of every matching event straight from SQLite.
    where, params = where_sql(flt)
    rows = f.store.db.execute(
        f"SELECT rowid, text_id, final_score, ts_ns FROM events {where}", params
    ).fetchall()
    sims = {t: float(f.store.text_vector(t) @ q) for t in {r[1] for r in rows}}
    want = sorted(rows, key=lambda r: (-round(sims[r[1]], 3), -r[2], -r[3]))[:10]
    assert [r for r, _s in hits] == [r[0] for r in want]
    f.store.close()


@pytest.mark.unit
@pytest.mark.parametrize(
    "flt",
    [
        Filters(min_divergence=0.3, since_ns=0),
        Filters(min_fast=0.5, max_ml=0.5),
        Filters(any_nets=["198.18.0.0/16"], ports=[22, 445], decisions=["DROP"]),
        Filters(src_nets=["2001:db8::/32"], protocols=["tcp"]),
        Filters(dst_nets=["198.18.0.5"], attack_types=["brute_force"], min_final=0.85),
        Filters(classifications=["CONSENSUS", "BENIGN"], verdicts=["BENIGN"], rag_required=False),
        Filters(rules=["syn_flood"], max_final=0.99),
    ],
)
def test_column_filters_agree_with_sql(indexed: EventStore, flt: Filters) -> None:
    """The in-memory columns and the SQL form of a filter select the same events, in the same order."""
    where, params = where_sql(flt)
    sql = f"SELECT rowid FROM events {where} ORDER BY final_score DESC, divergence DESC, ts_ns DESC"
    want = [r[0] for r in indexed.db.execute(sql, params)]
    assert want, "the case should match something"
    assert indexed.filter_rowids(flt).tolist() == want


@pytest.mark.unit
def test_where_sql_and_address_ranges() -> None:
    assert where_sql(Filters()) == ("", [])
    sql, params = where_sql(
        Filters(min_divergence=0.3, decisions=["DROP"], rules=["syn_flood"], any_nets=["198.18.0.0/16"])
    )
    assert "divergence > ?" in sql and "decision IN (?)" in sql and "rules LIKE ?" in sql
    assert 0.3 in params and "DROP" in params and "%,syn_flood,%" in params
    lo, hi = net_range("198.18.0.0/16")
    assert lo <= ip_key("198.18.200.1") <= hi and not lo <= ip_key("198.19.0.1") <= hi
    lo6, hi6 = net_range("2001:db8:1::/48")
    assert lo6 <= ip_key("2001:db8:1::10") <= hi6 and not lo <= ip_key("2001:db8:1::10") <= hi
