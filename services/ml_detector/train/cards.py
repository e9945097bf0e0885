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


def _prf_row(tp: int, fp: int, fn: int, tn: int) -> list[Any]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return [
        round(p, 4),
        round(r, 4),
        round(f1, 4),
        round(fp / (fp + tn), 5) if fp + tn else 0.0,
        tp,
        fp,
        fn,
        tn,
    ]


def _by_address(caps: list[dict[str, Any]]) -> str:
    n_att = sum(len(c["attackers"]) for c in caps)
    n_caught = sum(len(c["attackers_flagged"]) for c in caps)
    n_fp = sum(len(c["benign_addresses_flagged"]) for c in caps)
    n_ben = sum(c.get("benign_addresses", 0) for c in caps)
    which = ", ".join(a for c in caps for a in c["benign_addresses_flagged"]) or "none"
    return f"attackers flagged {n_caught}/{n_att}; benign addresses flagged {n_fp} of {n_ben} ({which})"


def _real_section(report: dict[str, Any], name: str, mine: list[str]) -> str:
    """The real-tool held-out captures, both extraction variants (or why there are none)."""
    info = report.get("netns") or {}
    real = report.get("held_out_real_tools") or {}
    if not info.get("used") or not real:
        return (
            "**No real-tool captures in this training run** "
            f"({info.get('reason', 'not recorded')}): the models saw crafted and public data only.\n"
        )
    parts = [
        "Whole captures never trained on: `ns-mixed-2` (every attack kind, each from its own address,"
        " with benign users) and `ns-benign-1`. Each is scored twice: flows as the sniffer's defaults"
        " cut them, and as the live lab's sniffer cuts them (`tcp_close_linger_s` 0,"
        " `half_open_timeout_s` 0.1: trailing ACKs, RST-only and half-open flows of their own).\n"
    ]
    for variant, title in (("default", "default flow settings"), ("live", "live-sniffer flow settings")):
        ev = real.get(variant)
        if not ev:
            continue
        pm = ev["per_model"][name]
        rows = [
            [k, *(ev["per_kind_any_model"][k][x] for x in ("precision", "recall", "f1", "fpr", "tp", "fn")),
             pm["recall_by_kind"].get(k, "-")]
            for k in mine
            if k in ev["per_kind_any_model"]
        ]  # fmt: skip
        parts.append(
            f"**{title}**: this model alone, its own kinds vs benign flows:\n\n"
            + _table([[pm[x] for x in ("precision", "recall", "f1", "fpr", "tp", "fp", "fn", "tn")]],
                     ["precision", "recall", "F1", "FPR", "TP", "FP", "FN", "TN"])
            + "\n\nPer attack kind (max over the four models):\n\n"
            + (_table(rows, ["kind", "precision", "recall", "F1", "FPR", "TP", "FN", "recall (this model)"])
               if rows else "(none of this model's kinds in the real-tool captures)")
            + f"\n\nBenign flows flagged by any model: FPR {ev['benign_flow_fpr_any_model']}. By address: "
            + _by_address(ev["captures"]) + ". Benign short TCP flows flagged (any model): "
            + (", ".join(f"{k} {v['flagged']}/{v['flows']}" for k, v in ev.get("short_benign_flows", {}).items()) or "-")
            + ".\n"
        )  # fmt: skip
    return "\n".join(parts)


def write_cards(
    out: Path, report: dict[str, Any], boosters: dict[str, lgb.Booster], doc: dict[str, str]
) -> None:
    held = report["held_out"]
    kinds = {k: m for k, m in report["kind_to_model"].items()}
    data = report["data"]
    gen_train = [d for d in data if d["group"] == "generated" and d["split"] == "train"]
    gen_test = [d for d in data if d["group"] == "generated" and d["split"] == "test"]
    shared = [d for d in data if d["group"] == "shared"]
    real = [d for d in data if d["group"] == "netns"]
    real_caps = sorted({d["capture"].split(" ")[0] for d in real})
    real_text = (
        f"{len(real_caps)} captures ({', '.join(real_caps)}; {sum(d['flows'] for d in real)} flows over both"
        " extraction variants), made by `make train` as root: nmap SYN/connect/UDP/slow/ping scans, hping3"
        " floods and SMB/RPC SYN sweeps, SSH login attempts, a curl beacon at a fixed interval; benign curl"
        " downloads (v4 and v6), TLS, DNS, SSH-like sessions, idle keepalives, refused and aborted"
        " connections (services/ml_detector/train/netns_capture.py). Labelled by the namespace address"
        " that sent each flow. Every choice is seeded, but the packets are real: **their bytes and sha256"
        " differ from run to run** (recorded per run in `models/training.json`), unlike the crafted"
        " captures. Each is extracted twice, with default flow settings and with the live sniffer's"
        " (no close linger, 0.1 s half-open timeout), and both variants are trained on."
        if real
        else "**none in this run**: "
        + str((report.get("netns") or {}).get("reason", "not recorded"))
        + ". `make train` as root (nmap, hping3, curl, openssl, dumpcap installed) adds them."
    )
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
                f"{c.get('attack_flows_flagged', '-')}/{c.get('attack_flows', '-')}",
                f"{c.get('benign_flows_flagged', '-')}/{c.get('benign_flows', '-')}",
            ]
            for c in loco
        ]
        tot = {
            k: sum(int(c.get(k, 0)) for c in loco)
            for k in ("attack_flows", "attack_flows_flagged", "benign_flows", "benign_flows_flagged")
        }
        loco_total = _prf_row(
            tot["attack_flows_flagged"],
            tot["benign_flows_flagged"],
            tot["attack_flows"] - tot["attack_flows_flagged"],
            tot["benign_flows"] - tot["benign_flows_flagged"],
        )
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
- **Real tools in network namespaces**: {real_text}
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

## Held-out real-tool captures (namespaces, split by capture, threshold 0.70)

{_real_section(report, name, mine)}
## Public captures, leave-one-capture-out (all four models retrained without the capture)

{_table(loco_rows, ["capture", "attackers", "flagged by ML (>= 0.70)", "benign addresses flagged", "attack flows flagged", "benign flows flagged"])}

All public captures together, per flow, each scored by models that never saw it (all attack kinds, any
model; early flows of a slow attacker count as misses):

{_table([loco_total], ["precision", "recall", "F1", "FPR", "TP", "FP", "FN", "TN"])}

ML only: the fast detector's rules (scan, sweep, SMB, RST ratio, SYN flood) add to this live.

## Limits

Flow-level, no payload. Crafted traffic is synthetic; the real-tool captures come from one small
namespace network (one victim host with 20 addresses, tools at fixed rates); the public captures are
few and small.
Per-source context needs a few flows of the same source: the first attempts of a slow attack score
like benign ones. Retrain after any change of the feature code (the loader refuses a model whose
feature list differs).
"""
        (out / name / "card.md").write_text(text)
