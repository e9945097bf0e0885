"""ML detector throughput: flows/s per core through all four models, per engine, batched and one
flow at a time, with p99 batch latency; plus the full path (features, context, scoring, events).

Baseline (same run): LightGBM native at batch size 1. Every engine runs single-threaded, so the
numbers are per core. Input rows are the flows of the public captures (../shared/data/pcaps),
tiled to the batch size. Last line: one JSON object.

    .venv/bin/python bench/detector.py [--quick] [--batch 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ml_defender.v1 import flow_pb2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.ml_detector.config import DetectorSettings  # noqa: E402
from services.ml_detector.context import ContextTracker  # noqa: E402
from services.ml_detector.detector import Detector, feature_matrix  # noqa: E402
from services.ml_detector.models import ModelSet, load_model_set  # noqa: E402
from services.sniffer.flows import extract_flows  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "pcaps"


def rows_and_records() -> tuple[np.ndarray, list[flow_pb2.FlowRecord]]:
    xs, recs = [], []
    for f in sorted(SHARED.glob("*.pcap*")):
        r = extract_flows([f]).records
        if r:
            xs.append(feature_matrix(r, ContextTracker()))
            recs.extend(r)
    return np.vstack(xs), recs


def timed_batches(
    ms: ModelSet, x: np.ndarray, batch: int, seconds: float, max_batches: int
) -> tuple[float, float]:
    """(flows/s, p99 seconds per batch) for repeated batches of `batch` rows."""
    n = len(x)
    lat: list[float] = []
    flows = 0
    t_end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < t_end and len(lat) < max_batches:
        lo = (i * batch) % max(1, n - batch + 1)
        xb = x[lo : lo + batch]
        t0 = time.perf_counter()
        ms.predict(xb)
        lat.append(time.perf_counter() - t0)
        flows += len(xb)
        i += 1
    total = sum(lat)
    return flows / total, float(np.percentile(lat, 99))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (ends within a minute)")
    ap.add_argument("--batch", type=int, default=1024, help="flows per batched model call")
    args = ap.parse_args()
    secs = 1.0 if args.quick else 5.0
    x, recs = rows_and_records()
    reps = int(np.ceil(max(args.batch * 4, 50_000) / len(x)))
    xt = np.ascontiguousarray(np.tile(x, (reps, 1)))
    cache = str(REPO / "var" / "cache" / "ml_detector")
    results: dict[str, dict[str, float]] = {}
    for engine in ("lightgbm", "lleaves", "onnx"):
        t0 = time.perf_counter()
        ms = load_model_set(DetectorSettings(engine=engine, engine_cache_dir=cache))
        load_s = time.perf_counter() - t0
        fps_b, p99_b = timed_batches(ms, xt, args.batch, secs, 100_000)
        fps_1, p99_1 = timed_batches(ms, xt, 1, secs, 20_000)
        results[engine] = {
            "batched_flows_per_s": fps_b,
            "batched_p99_ms": p99_b * 1e3,
            "single_flows_per_s": fps_1,
            "single_p99_ms": p99_1 * 1e3,
            "load_s": load_s,
        }
        print(
            f"{engine:<9} batch {args.batch}: {fps_b:>12,.0f} flows/s  p99 {p99_b * 1e3:7.3f} ms | "
            f"batch 1: {fps_1:>9,.0f} flows/s  p99 {p99_1 * 1e3:7.3f} ms | load {load_s:.1f} s"
        )
    base = results["lightgbm"]["single_flows_per_s"]
    best = max(results, key=lambda e: results[e]["batched_flows_per_s"])
    # full path: features + context + four models + scoring + DetectionEvent protos
    settings = DetectorSettings(engine=best, engine_cache_dir=cache)
    det = Detector(settings, load_model_set(settings))
    batch_recs = (recs * int(np.ceil(args.batch / len(recs))))[: args.batch]
    lat: list[float] = []
    t_end = time.perf_counter() + secs
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        det.score(batch_recs)
        lat.append(time.perf_counter() - t0)
    full_fps = len(lat) * len(batch_recs) / sum(lat)
    print(
        f"full path ({best}, batch {args.batch}): {full_fps:,.0f} flows/s, p99 {np.percentile(lat, 99) * 1e3:.2f} ms"
    )
    for e, r in results.items():
        print(
            f"ratio vs lightgbm batch 1: {e} batched {r['batched_flows_per_s'] / base:.1f}x, "
            f"batch 1 {r['single_flows_per_s'] / base:.2f}x"
        )
    out = {
        "baseline": "lightgbm_batch_1",
        "batch_flows": args.batch,
        "models": 4,
        "best_engine": best,
        "best_batched_flows_per_s": round(results[best]["batched_flows_per_s"]),
        "best_batched_p99_ms": round(results[best]["batched_p99_ms"], 3),
        "ratio_best_batched_vs_baseline": round(results[best]["batched_flows_per_s"] / base, 2),
        "full_path_flows_per_s": round(full_fps),
        "full_path_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
    }
    for e, r in results.items():
        out[f"{e}_batched_flows_per_s"] = round(r["batched_flows_per_s"])
        out[f"{e}_batched_p99_ms"] = round(r["batched_p99_ms"], 3)
        out[f"{e}_single_flows_per_s"] = round(r["single_flows_per_s"])
        out[f"{e}_single_p99_ms"] = round(r["single_p99_ms"], 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
