"""Model cards (models/<name>/card.md) written from the training report, so numbers never drift
from what `make train` measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np


def _table(rows: list[list[Any]], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_cards(
    out: Path, report: dict[str, Any], boosters: dict[str, lgb.Booster], doc: dict[str, str]
) -> None:
    held = report["held_out"]
    kinds = {k: m for k, m in report["kind_to_model"].items()}
    data = report["data"]
    gen_train = [d for d in data if d["group"] == "generated" and d["split"] == "train"]
    gen_test = [d for d in data if d["group"] == "generated" and d["split"] == "test"]
    shared = [d for d in data if d["group"] == "shared"]
    for name, booster in boosters.items():
        pm = held["per_model"][name]
        mine = sorted(k for k, m in kinds.items() if m == name)
        gain = booster.feature_importance("gain")
        order = np.argsort(-gain)[:12]
        feats = booster.feature_name()
        kind_rows = [
            [
                k,
                *(
                    held["per_kind_any_model"].get(k, {}).get(x, "-")
                    for x in ("precision", "recall", "f1", "fpr")
                ),
                pm["recall_by_kind"].get(k, "-"),
            ]
            for k in mine
        ]
        loco = list(report["shared_leave_one_capture_out"])
        caps = held["captures"]
        n_attackers = sum(len(c["attackers"]) for c in caps)
        n_caught = sum(len(c["attackers_flagged"]) for c in caps)
        n_fp = sum(len(c["benign_addresses_flagged"]) for c in caps)
        n_benign = sum(c.get("benign_addresses", 0) for c in caps)
        fp_list = (
            ", ".join(
                f"{c['capture']}: {len(c['benign_addresses_flagged'])}"
                for c in caps
                if c["benign_addresses_flagged"]
            )
            or "none"
        )
        loco_rows = [
            [
                c["capture"],
                ", ".join(c["attackers"]) or "-",
                ", ".join(c["attackers_flagged"]) or "-",
                ", ".join(c["benign_addresses_flagged"][:4]) or "-",
            ]
            for c in loco
        ]
        text = f"""# Model card: `{name}`

{doc[name]}. One of four LightGBM binary detectors of the ml-detector; the detector's ML score is the
maximum over the enabled models ("maximum threat wins", DESIGN.md section 3).

- **file**: `models/{name}/model.txt` (LightGBM text; `model.onnx` is the same trees for onnxruntime)
- **version** (sha256 of model.txt): `{report["models"][name]["sha256"]}`
- **trees**: {report["models"][name]["trees"]}, rounds {report["rounds"]}, seed {report["seed"]}
- **training command**: `{report["command"]}` ({report["seconds"]} s for all four models, cards and evaluation)
- **positive class**: flows sent by an attacker of kind {", ".join(f"`{k}`" for k in mine)}; negatives: benign
  flows (attacks of the other detectors' kinds are left out of this model's training). An attacker's
  first two flows in the 60 s context window look like anyone's (one login, one fetch) and are left
  out of training unless the flow is a flood by itself (>= 100 packets); they still count as misses
  below, so recall is per flow, early flows included.

## Features

{len(report["features"])} inputs: the 53 flow features of FlowRecord (DESIGN.md section 4, proto order) and
9 per-source context features (services/ml_detector/context.py: flows, same-port flows, same
destination flows, distinct destinations and ports, unanswered and RST ratios, size and interval
regularity over the same source's flows in the last 60 s), computed by the same code live and in
training. Highest gain:

{_table([[feats[i], round(float(gain[i]), 1)] for i in order], ["feature", "gain"])}

## Data

Labels are by sending address. Flows come from the sniffer's own extractor (`services/sniffer/flows.py`).

- **Generated** (services/ml_detector/train/generate.py, crafted packet by packet, deterministic): {len(gen_train)} training captures
  and {len(gen_test)} held-out captures (seed 3 of every attack kind, 3 benign-only captures). Each is
  3 minutes of 3-6 benign hosts (web pages, DNS, TLS, SSH, SMB, keepalives, NTP, LAN chatter, slow
  polling, FTP) plus one attacker. The packets are crafted in Python, not captured from real tools in
  namespaces; their shapes follow what nmap, hping3, hydra, worms and bots send.
- **Public** (../shared/data/pcaps, labelled by TRUTH.json): {len(shared)} captures, **all in the training data of
  the committed models**. So `detect_check.py` on those captures is *not* a held-out test for these
  models; the leave-one-capture-out table below is the honest estimate for them.
- Data hashes (sha256 per capture) are in `models/training.json`.

## Held-out metrics (generated test captures, split by capture, threshold 0.70 = DROP)

This model alone, its own kinds vs benign flows:

{_table([[pm["precision"], pm["recall"], pm["f1"], pm["fpr"], pm["tp"], pm["fp"], pm["fn"], pm["tn"]]], ["precision", "recall", "F1", "FPR", "TP", "FP", "FN", "TN"])}

Per attack kind (the full detector, max over the four models, per flow; precision and FPR count
the benign flows of the held-out captures that contain that kind; last column: recall of this
model alone):

{_table(kind_rows, ["kind", "precision", "recall", "F1", "FPR", "recall (this model)"])}

Benign flows flagged by any model on held-out captures: FPR {held["benign_flow_fpr_any_model"]}.
By address (what the firewall would block) on the {len(held["captures"])} held-out captures:
attackers flagged {n_caught}/{n_attackers}; benign addresses flagged {n_fp} of {n_benign}
({fp_list}).

## Public captures, leave-one-capture-out (all four models retrained without the capture)

{_table(loco_rows, ["capture", "attackers", "flagged by ML (>= 0.70)", "benign addresses flagged"])}

ML only: the fast detector's rules (scan, sweep, SMB, RST ratio, SYN flood) add to this live.

## Limits

Flow-level, no payload. Generated traffic is synthetic; the public captures are few and small.
Per-source context needs a few flows of the same source: the first attempts of a slow attack score
like benign ones. Retrain after any change of the feature code (the loader refuses a model whose
feature list differs).
"""
        (out / name / "card.md").write_text(text)
