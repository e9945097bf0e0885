"""rag: ingest throughput (8,384 and 100k events) and question latency (p50/p95 at 10k and 100k,
embedding of the question included), each against a baseline measured in the same run.

Ingest baseline: the same events embedded one at a time without deduplication (the naive path),
timed on a sample and scaled to the corpus. Query baseline: a brute-force pass in Python/numpy
(every event's fields checked in Python, a full matrix product over every vector) for the same
questions. Corpora come from services.rag.corpus (seeded), written as artifact pairs in a temp dir.

    .venv/bin/python bench/rag.py [--quick] [--keep DIR]

--quick: 8,384 events ingested, queries at 10k (ends within a minute). Full: also 100k.
Last line: one JSON object (units in key names). Targets (DESIGN.md section 10): 8,384 in <= 10 s,
100k in <= 120 s, query p95 <= 20 ms at 100k.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from libs.common.events import event_to_dict  # noqa: E402
from services.rag.config import RagSettings  # noqa: E402
from services.rag.core import RagCore  # noqa: E402
from services.rag.corpus import CorpusGenerator, write_pair  # noqa: E402
from services.rag.embedder import Embedder  # noqa: E402
from services.rag.filters import Filters  # noqa: E402
from services.rag.query import Vocabulary, parse_question  # noqa: E402
from services.rag.text import AddressRoles, event_text  # noqa: E402

NOW_NS = int(datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()) * 1_000_000_000
QUESTIONS = [
    "Show me high divergence events from yesterday",
    "Find botnet-like behavior",
    "Fast detector triggered but ML disagreed",
    "blocked port scans in the last 6 hours",
    "ssh brute force against 198.18.0.5",
    "data exfiltration to the outside",
    "consensus events today over tcp port 445",
    "periodic beaconing to a command and control server from 198.18.0.0/16",
    "events with score above 0.95",
    "huge uploads to an external host yesterday",
]


def write_events(root: Path, n: int, seed: int, start: int = 0) -> list[dict[str, Any]]:
    gen = CorpusGenerator(seed, NOW_NS, days=7.0)
    docs = []
    for g in gen.iter(n):
        write_pair(root, g.event)
        docs.append(event_to_dict(g.event))
    return docs


def settings(tmp: Path) -> RagSettings:
    return RagSettings.model_validate(
        {
            "index": {"dir": str(tmp / "index")},
            "ingest": {"artifacts_root": str(tmp / "artifacts"), "batch_events": 2048},
            "metrics": {"port": 0},
        }
    )


def ingest(tmp: Path, emb: Embedder) -> tuple[RagCore, float, int, float]:
    """Wall and CPU seconds (CPU: what an idle machine would roughly take, single-threaded path)."""
    core = RagCore(settings(tmp), emb)
    t0, c0 = time.perf_counter(), time.process_time()
    report = core.catch_up()
    return core, time.perf_counter() - t0, report.added, time.process_time() - c0


def baseline_ingest_s(emb: Embedder, docs: list[dict[str, Any]], sample: int = 64) -> float:
    """Naive path: every event's text embedded on its own, no dedup; timed on a sample, scaled."""
    roles = AddressRoles()
    texts = [event_text(d, roles) for d in docs[:sample]]
    t0 = time.perf_counter()
    for t in texts:
        emb._run([t])
    return (time.perf_counter() - t0) / len(texts) * len(docs)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def query_latency(core: RagCore, rounds: int) -> tuple[float, float, float, float]:
    """Wall p50/p95 and CPU-time p50/p95 (ms) per question, embedding included."""
    lat, cpu = [], []
    for _ in range(rounds):
        for q in QUESTIONS:
            t0, c0 = time.perf_counter(), time.process_time()
            core.engine.query(q, NOW_NS, 10)
            lat.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
    return pct(lat, 50), pct(lat, 95), pct(cpu, 50), pct(cpu, 95)


def baseline_query(core: RagCore, docs: list[dict[str, Any]], rounds: int) -> tuple[float, float]:
    """Brute force: Python predicate over every event + numpy scan of every vector."""
    store = core.store
    with store.lock:
        rows = store.db.execute(
            "SELECT e.event_id, t.vec FROM events e JOIN texts t ON t.id = e.text_id ORDER BY e.rowid"
        ).fetchall()
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    by_id = {d["event_id"]: d for d in docs}
    docs = [by_id[r[0]] for r in rows]
    emb = core.embedder()
    attacks = store.attack_types()
    lat = []
    for _ in range(rounds):
        for q in QUESTIONS:
            t0 = time.perf_counter()
            pq = parse_question(q, NOW_NS, Vocabulary(), attacks)
            keep = np.fromiter((_match(pq.filters, d) for d in docs), dtype=bool, count=len(docs))
            if pq.semantic:
                sims = vecs @ emb.embed_one(pq.semantic)
                sims[~keep] = -2
                np.argsort(-sims)[:10]
            else:
                idx = np.nonzero(keep)[0]
                sorted(idx, key=lambda i: -docs[i]["final_score"])[:10]
            lat.append((time.perf_counter() - t0) * 1000)
    return pct(lat, 50), pct(lat, 95)


def _match(f: Filters, d: dict[str, Any]) -> bool:
    ts = d["_ts"]
    return not (
        (f.since_ns is not None and ts < f.since_ns)
        or (f.until_ns is not None and ts >= f.until_ns)
        or (f.min_divergence is not None and d["divergence"] <= f.min_divergence)
        or (f.min_final is not None and d["final_score"] < f.min_final)
        or (f.min_fast is not None and d["fast_score"] < f.min_fast)
        or (f.max_ml is not None and d["ml_score"] >= f.max_ml)
        or (f.decisions and d["decision"] not in f.decisions)
        or (f.classifications and d["classification"] not in f.classifications)
        or (f.attack_types and d["attack_type"] not in f.attack_types)
        or (f.ports and d["dst_port"] not in f.ports and d["src_port"] not in f.ports)
        or (f.protocols and d["protocol"] not in f.protocols)
    )


def with_ts(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from services.rag.ingest import parse_ts

    for d in docs:
        d["_ts"] = parse_ts(d["timestamp"])
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8,384 ingest + 10k queries only (< 1 min)")
    ap.add_argument(
        "--rounds", type=int, default=None, help="passes over the question list per size (3 quick, 10 full)"
    )
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    args.rounds = args.rounds or (3 if args.quick else 10)
    work = args.keep or Path(tempfile.mkdtemp(prefix="mld-rag-bench-"))
    result: dict[str, Any] = {"bench": "rag", "quick": args.quick}
    try:
        start = time.perf_counter()
        emb = Embedder()
        result["model_load_s"] = round(time.perf_counter() - start, 3)

        # 8,384 events: ingest time, against the naive (unbatched, undeduplicated) embedding path.
        docs = write_events(work / "a" / "artifacts", 8384, seed=1)
        print(f"[{time.perf_counter() - start:.0f} s] 8,384 pairs written", file=sys.stderr)
        core, secs, added, cpu = ingest(work / "a", emb)
        assert added == 8384, added
        base = baseline_ingest_s(emb, docs)
        result.update(
            ingest_8384_s=round(secs, 3),
            ingest_8384_cpu_s=round(cpu, 3),
            ingest_8384_events_per_s=round(8384 / secs, 1),
            ingest_8384_distinct_texts=core.store.stats()["distinct_texts"],
            baseline_naive_embed_8384_s=round(base, 1),
            ingest_speedup_vs_naive_ratio=round(base / secs, 1),
        )
        print(
            f"ingest 8,384: {secs:.2f} s ({8384 / secs:.0f} events/s); naive embedding alone ~{base:.0f} s "
            f"-> {base / secs:.1f}x",
            file=sys.stderr,
        )

        # 10k events: question latency.
        docs += write_events(work / "a" / "artifacts", 10_000 - 8384, seed=2)
        core.catch_up()
        assert core.store.count() == 10_000
        print(f"[{time.perf_counter() - start:.0f} s] 10k indexed", file=sys.stderr)
        p50, p95, c50, c95 = query_latency(core, args.rounds)
        b50, _b95 = baseline_query(core, with_ts(docs), max(1, args.rounds // 5))
        result.update(
            query_10k_p50_ms=round(p50, 2),
            query_10k_p95_ms=round(p95, 2),
            query_10k_cpu_p50_ms=round(c50, 2),
            query_10k_cpu_p95_ms=round(c95, 2),
            baseline_bruteforce_10k_p50_ms=round(b50, 2),
            query_10k_speedup_vs_bruteforce_ratio=round(b50 / p50, 2),
        )
        print(
            f"query at 10k: p50 {p50:.1f} ms p95 {p95:.1f} ms; brute force p50 {b50:.1f} ms", file=sys.stderr
        )
        core.close()

        if not args.quick:
            docs = write_events(work / "b" / "artifacts", 100_000, seed=3)
            print(f"[{time.perf_counter() - start:.0f} s] 100k pairs written", file=sys.stderr)
            core, secs, added, cpu = ingest(work / "b", emb)
            assert added == 100_000, added
            result.update(
                ingest_100k_s=round(secs, 2),
                ingest_100k_cpu_s=round(cpu, 2),
                ingest_100k_events_per_s=round(100_000 / secs, 1),
                index_kind_100k=core.store.kind,
            )
            print(f"ingest 100k: {secs:.1f} s", file=sys.stderr)
            p50, p95, c50, c95 = query_latency(core, args.rounds)
            b50, _b95 = baseline_query(core, with_ts(docs), max(1, args.rounds // 5))
            result.update(
                query_100k_p50_ms=round(p50, 2),
                query_100k_p95_ms=round(p95, 2),
                query_100k_cpu_p50_ms=round(c50, 2),
                query_100k_cpu_p95_ms=round(c95, 2),
                baseline_bruteforce_100k_p50_ms=round(b50, 2),
                query_100k_speedup_vs_bruteforce_ratio=round(b50 / p50, 2),
            )
            print(
                f"query at 100k: p50 {p50:.1f} ms p95 {p95:.1f} ms; brute force p50 {b50:.1f} ms",
                file=sys.stderr,
            )
            core.close()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    sys.stderr.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
