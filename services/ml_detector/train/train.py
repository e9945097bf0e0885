"""`make train`: captures -> features -> four LightGBM detectors -> models/<name>/ + cards.

Steps (all seeds fixed, every input's sha256 recorded in models/training.json):
1. generate the labelled training captures (services/ml_detector/train/generate.py) and, as root,
   capture real tools in network namespaces (netns_capture.py; held out: ns-mixed-2, ns-benign-1);
2. extract flows with the sniffer's extractor and build the detector's feature rows;
3. evaluate on held-out generated captures (split by capture: seed 3 of every attack kind and 3
   benign-only captures are never trained on), and leave-one-capture-out on the shared captures
   (each scored by models trained without it);
4. train the committed models on the training split plus every shared capture;
5. write model.txt, model.onnx, sample.json and card.md per model.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from services.ml_detector.config import MODEL_NAMES
from services.ml_detector.models import MODEL_FEATURES, sha256_file
from services.ml_detector.onnx_export import lightgbm_to_onnx
from services.ml_detector.train.dataset import (
    LIVE_SUFFIX,
    CaptureData,
    load_generated,
    load_netns,
    load_shared,
)
from services.ml_detector.train.generate import generate
from services.ml_detector.train.scenarios import ATTACK_MODELS

log = logging.getLogger("mld.train")
SEED = 20260101
# An attacker's first flows look like anyone's (one SSH login, one HTTP fetch): trained as attacks
# they teach the models to flag single benign sessions. Attacker flows are positives only once the
# source has this many flows in the context window; the earlier ones are left out of training
# (they still count as misses in the evaluation).
MIN_ATTACK_CONTEXT = 3
FLOOD_PACKETS = 100  # ... unless the flow is a flood by itself (one ICMP or UDP flow of many packets)
_PACKETS = MODEL_FEATURES.index("bidirectional_packets")
_SRC_FLOWS = MODEL_FEATURES.index("src_window_flows")
DROP = 0.70
SHARED_KIND_MODELS = {
    "portscan": "traffic",
    "icmp_sweep": "traffic",
    "botnet": "traffic",
    "ssh_bruteforce": "internal",
    "ftp_bruteforce": "internal",
}
KIND_MODEL: dict[str, str] = {**ATTACK_MODELS, **SHARED_KIND_MODELS}
MODEL_DOC = {
    "ddos": "floods (SYN, UDP, ICMP) against one victim",
    "ransomware": "ransomware-like spreading: SMB (445/139) and DCE/RPC (135) attempts across many hosts",
    "traffic": "traffic anomalies: port scans (SYN, connect, UDP, slow), ICMP sweeps, botnet beaconing",
    "internal": "internal lateral movement: SSH/FTP/RDP password guessing, admin sessions hopping hosts",
}


@dataclass(frozen=True)
class TrainConfig:
    rounds: int = 120
    params: tuple[tuple[str, Any], ...] = (
        ("objective", "binary"),
        ("learning_rate", 0.06),
        ("num_leaves", 15),
        ("min_data_in_leaf", 10),
        ("feature_fraction", 0.8),
        ("bagging_fraction", 0.8),
        ("bagging_freq", 1),
        ("lambda_l2", 1.0),
        ("max_bin", 255),
        ("seed", SEED),
        ("deterministic", True),
        ("force_row_wise", True),
        ("num_threads", 2),
        ("verbose", -1),
    )
    shared_weight: float = 5.0


def _rows(
    caps: Sequence[CaptureData], model: str, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positives: the model's attack kinds; negatives: benign flows. Weighted per (capture, label)."""
    xs, ys, ws = [], [], []
    for c in caps:
        if len(c.x) == 0:
            continue
        pos = np.array([k != "" and KIND_MODEL.get(k, "traffic") == model for k in c.kind], dtype=bool)
        pos &= (c.x[:, _SRC_FLOWS] >= MIN_ATTACK_CONTEXT) | (c.x[:, _PACKETS] >= FLOOD_PACKETS)
        neg = c.kind == ""
        for mask, label in ((pos, 1), (neg, 0)):
            n = int(mask.sum())
            if n == 0:
                continue
            w = np.full(n, np.sqrt(n) / n * (cfg.shared_weight if c.group == "shared" else 1.0))
            xs.append(c.x[mask])
            ys.append(np.full(n, label))
            ws.append(w)
    x, y, w = np.vstack(xs), np.concatenate(ys), np.concatenate(ws)
    pos_w, neg_w = w[y == 1].sum(), w[y == 0].sum()
    if pos_w > 0:
        w[y == 1] *= neg_w / pos_w  # balance the classes
    return x, y, w


def fit(caps: Sequence[CaptureData], model: str, cfg: TrainConfig) -> lgb.Booster:
    x, y, w = _rows(caps, model, cfg)
    ds = lgb.Dataset(x, y, weight=w, feature_name=list(MODEL_FEATURES), free_raw_data=True)
    return lgb.train(dict(cfg.params), ds, num_boost_round=cfg.rounds)


def _prf(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | int]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        "fpr": round(fp / (fp + tn), 5) if fp + tn else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def evaluate(boosters: dict[str, lgb.Booster], caps: Sequence[CaptureData]) -> dict[str, Any]:
    """Flow-level metrics per detector and per attack kind, plus address-level results per capture."""
    scores: dict[str, dict[str, np.ndarray]] = {
        c.name: {
            m: np.asarray(b.predict(c.x, num_threads=2)) if len(c.x) else np.zeros(0)
            for m, b in boosters.items()
        }
        for c in caps
    }
    per_model: dict[str, Any] = {}
    for m in boosters:
        tp = fp = fn = tn = 0
        kinds: dict[str, list[int]] = {}
        for c in caps:
            s = scores[c.name][m] >= DROP
            mine = np.array([k != "" and KIND_MODEL.get(k, "traffic") == m for k in c.kind], dtype=bool)
            ben = c.kind == ""
            tp += int((s & mine).sum())
            fn += int((~s & mine).sum())
            fp += int((s & ben).sum())
            tn += int((~s & ben).sum())
            for k in set(c.kind[mine]):
                km = mine & (c.kind == k)
                acc = kinds.setdefault(str(k), [0, 0])
                acc[0] += int((s & km).sum())
                acc[1] += int(km.sum())
        per_model[m] = _prf(tp, fp, fn, tn)
        per_model[m]["recall_by_kind"] = {
            k: round(a / b, 4) if b else 0.0 for k, (a, b) in sorted(kinds.items())
        }
    per_kind: dict[str, Any] = {}
    captures: list[dict[str, Any]] = []
    ben_tot = ben_fp = 0
    for c in caps:
        mx = np.max(np.vstack(list(scores[c.name].values())), axis=0) if len(c.x) else np.zeros(0)
        flagged = mx >= DROP
        ben = c.kind == ""
        ben_tot += int(ben.sum())
        ben_fp += int((flagged & ben).sum())
        for k in set(c.kind[~ben]):
            km = c.kind == k
            acc = per_kind.setdefault(str(k), {"tp": 0, "fn": 0, "fp": 0, "tn": 0})
            acc["tp"] += int((flagged & km).sum())
            acc["fn"] += int((~flagged & km).sum())
            acc["fp"] += int((flagged & ben).sum())
            acc["tn"] += int((~flagged & ben).sum())
        attackers = sorted({str(s) for s in c.src[~ben]})
        caught = sorted({str(s) for s in c.src[flagged & ~ben]})
        false_addr = sorted({str(s) for s in c.src[flagged & ben]})
        n_benign_addr = len({str(s) for s in c.src[ben]} - set(attackers))
        captures.append(
            {
                "capture": c.name,
                "split": c.split,
                "flows": len(c.x),
                "attack_flows": int((~ben).sum()),
                "attack_flows_flagged": int((flagged & ~ben).sum()),
                "benign_flows": int(ben.sum()),
                "benign_flows_flagged": int((flagged & ben).sum()),
                "attackers": attackers,
                "attackers_flagged": caught,
                "benign_addresses_flagged": false_addr,
                "benign_addresses": n_benign_addr,
            }
        )
    kinds_out = {k: _prf(v["tp"], v["fp"], v["fn"], v["tn"]) for k, v in sorted(per_kind.items())}
    return {
        "per_model": per_model,
        "per_kind_any_model": kinds_out,
        "captures": captures,
        "benign_flow_fpr_any_model": round(ben_fp / ben_tot, 5) if ben_tot else 0.0,
    }


_F = {n: MODEL_FEATURES.index(n) for n in MODEL_FEATURES}


def short_benign_flows(boosters: dict[str, lgb.Booster], caps: Sequence[CaptureData]) -> dict[str, Any]:
    """Benign TCP flows a live sniffer with short lingers cuts off on their own (the trailing ACK of a
    FIN exchange, RST-only flows, half-open SYNs) and how many of them any model flags."""
    out: dict[str, Any] = {}
    for c in caps:
        if not len(c.x):
            continue
        x = c.x
        mx = np.max(np.vstack([np.asarray(b.predict(x, num_threads=2)) for b in boosters.values()]), axis=0)
        tcp, ben = x[:, _F["protocol"]] == 6, c.kind == ""
        syn, rst = x[:, _F["bidirectional_syn_packets"]], x[:, _F["bidirectional_rst_packets"]]
        pk, back = x[:, _F["bidirectional_packets"]], x[:, _F["dst2src_packets"]]
        shapes = {
            "trailing_ack": (pk == 1) & (syn == 0) & (rst == 0),
            "rst_only": (syn == 0) & (rst > 0) & (pk <= 2),
            "half_open_syn": (syn > 0) & (back == 0),
        }
        for shape, m in shapes.items():
            sel = tcp & ben & m
            acc = out.setdefault(shape, {"flows": 0, "flagged": 0})
            acc["flows"] += int(sel.sum())
            acc["flagged"] += int((sel & (mx >= DROP)).sum())
    return out


def _sample(boosters: dict[str, lgb.Booster], caps: Sequence[CaptureData], n: int = 32) -> np.ndarray:
    """A fixed, varied set of rows (benign and attack) for the load-time engine check."""
    rng = np.random.default_rng(SEED)
    rows = np.vstack([c.x for c in caps if len(c.x)])
    kinds = np.concatenate([c.kind for c in caps if len(c.x)])
    pos, neg = np.flatnonzero(kinds != ""), np.flatnonzero(kinds == "")
    pick = np.concatenate(
        [
            rng.choice(pos, min(n // 2, len(pos)), replace=False),
            rng.choice(neg, min(n // 2, len(neg)), replace=False),
        ]
    )
    return np.asarray(rows[np.sort(pick)])


def real_tool_captures(work: Path, quick: bool = False) -> tuple[list[CaptureData], dict[str, Any]]:
    """The namespace captures (services/ml_detector/train/netns_capture.py), or none with the reason.

    Without root or the tools the models are trained on crafted and public data only; that is
    logged loudly and written into training.json and every card."""
    from services.ml_detector.train import netns_capture as nc

    why = nc.unavailable()
    if why is None:
        try:
            plans = nc.plan(scale=0.3) if quick else nc.plan()
            if quick:
                plans = [p for p in plans if p.name in ("ns-mixed-0", "ns-benign-1")]
            labels = nc.generate(work / "netns", plans)
            caps = load_netns(work / "netns")
            info = {
                "used": True,
                "captures": [
                    {
                        k: v
                        for k, v in lb.items()
                        if k in ("file", "split", "sha256", "attackers", "tool_exits")
                    }
                    for lb in labels
                ],
            }
            return caps, info
        except (nc.NetnsError, OSError, subprocess.SubprocessError) as exc:
            why = f"{type(exc).__name__}: {exc}"
    log.warning(
        "NO REAL-TOOL DATA: training on crafted and public captures only",
        extra={"reason": why, "fix": "run `make train` as root with nmap, hping3, curl, openssl, dumpcap"},
    )
    print(
        f"mld-train: WARNING: no real-tool namespace captures ({why}); crafted + public data only",
        file=sys.stderr,
    )
    return [], {"used": False, "reason": why}


def run(
    out_models: Path,
    work: Path,
    shared: Path | None,
    cfg: TrainConfig,
    quick: bool = False,
    netns: bool = False,
) -> dict[str, Any]:
    """With `netns`, real-tool captures from network namespaces join the data (root only; else a
    loud fallback to crafted + public data)."""
    t0 = time.monotonic()
    cap_dir = work / "captures"
    if quick:
        from services.ml_detector.train.generate import Planned

        plan = [
            Planned("gen-ssh_bruteforce-0", "ssh_bruteforce", 0, "train"),
            Planned("gen-portscan-0", "portscan", 0, "train"),
            Planned("gen-syn_flood-0", "syn_flood", 0, "train"),
            Planned("gen-smb_spread-0", "smb_spread", 0, "train"),
            Planned("gen-benign-0", None, 0, "train"),
            Planned("gen-ftp_bruteforce-3", "ftp_bruteforce", 3, "test"),
        ]
        labels = generate(cap_dir, plan)
    else:
        labels = generate(cap_dir)
    log.info("captures generated", extra={"captures": len(labels), "s": round(time.monotonic() - t0, 1)})
    gen = load_generated(cap_dir)
    if netns:
        real, real_info = real_tool_captures(work, quick)
        log.info("real-tool captures", extra={"captures": len(real), "s": round(time.monotonic() - t0, 1)})
    else:
        real, real_info = [], {"used": False, "reason": "not requested (--no-netns or --quick)"}
    sh = load_shared(shared) if shared is not None and (shared / "TRUTH.json").exists() else []
    log.info(
        "features built",
        extra={"rows": int(sum(len(c.x) for c in gen + real + sh)), "s": round(time.monotonic() - t0, 1)},
    )
    gen_train = [c for c in gen + real if c.split == "train"]
    train_caps = gen_train + sh
    test_caps = [c for c in gen if c.split == "test"]
    real_test = [c for c in real if c.split == "test"]
    boosters = {m: fit(train_caps, m, cfg) for m in MODEL_NAMES}
    log.info("models trained", extra={"s": round(time.monotonic() - t0, 1)})
    held_out = evaluate(boosters, test_caps)
    held_out_real = {
        variant: evaluate(boosters, [c for c in real_test if c.name.endswith(LIVE_SUFFIX) == live])
        for variant, live in (("default", False), ("live", True))
        if real_test
    }
    for variant, live in (("default", False), ("live", True)):
        if variant in held_out_real:
            held_out_real[variant]["short_benign_flows"] = short_benign_flows(
                boosters, [c for c in real_test if c.name.endswith(LIVE_SUFFIX) == live]
            )
    loco: list[dict[str, Any]] = []
    if not quick:
        for i, c in enumerate(sh):
            others = gen_train + sh[:i] + sh[i + 1 :]
            bs = {m: fit(others, m, cfg) for m in MODEL_NAMES}
            loco.extend(evaluate(bs, [c])["captures"])
        log.info("leave-one-capture-out done", extra={"s": round(time.monotonic() - t0, 1)})
    sample = _sample(boosters, test_caps + real_test or train_caps)
    report: dict[str, Any] = {
        "command": "make train  (= .venv/bin/python -m services.ml_detector.train)",
        "seed": SEED,
        "rounds": cfg.rounds,
        "params": dict(cfg.params),
        "features": list(MODEL_FEATURES),
        "kind_to_model": KIND_MODEL,
        "data": [
            {
                "capture": c.name,
                "group": c.group,
                "split": c.split,
                "sha256": c.sha256,
                "flows": len(c.x),
                "attack_flows": int((c.kind != "").sum()),
            }
            for c in gen + real + sh
        ],
        "netns": real_info,
        "held_out": held_out,
        "held_out_real_tools": held_out_real,
        "shared_leave_one_capture_out": loco,
        "versions": {
            "lightgbm": lgb.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "seconds": round(time.monotonic() - t0, 1),
    }
    out_models.mkdir(parents=True, exist_ok=True)
    for m, b in boosters.items():
        d = out_models / m
        d.mkdir(parents=True, exist_ok=True)
        b.save_model(str(d / "model.txt"))
        (d / "model.sha256").write_text(f"{sha256_file(d / 'model.txt')}  model.txt\n")
        (d / "model.onnx").write_bytes(lightgbm_to_onnx(b.dump_model()))
        (d / "sample.json").write_text(
            json.dumps({"inputs": sample.tolist(), "scores": np.asarray(b.predict(sample)).tolist()})
        )
        report.setdefault("models", {})[m] = {"sha256": sha256_file(d / "model.txt"), "trees": b.num_trees()}
    (out_models / "training.json").write_text(json.dumps(report, indent=1, default=str))
    from services.ml_detector.train.cards import write_cards

    write_cards(out_models, report, boosters, MODEL_DOC)
    return report
