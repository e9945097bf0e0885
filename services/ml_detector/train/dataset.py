"""From labelled captures to feature rows: the sniffer's own `extract_flows` (the code that runs
live), then the detector's own feature matrix with per-source context (`detector.feature_matrix`),
one fresh context tracker per capture, records in export order as the live detector gets them.

Labels are per flow, from the sending address: an attacker's flows carry its attack kind; flows
from an `ignore` address (scan victims that answer, C2 servers) are left out; the rest are benign.
For a capture scored by victim (spoofed floods), flows toward a victim are the attack.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from libs.common.events import ip_text
from services.ml_detector.config import DetectorSettings
from services.ml_detector.context import ContextTracker
from services.ml_detector.detector import feature_matrix


@dataclass(frozen=True)
class CaptureData:
    name: str
    group: str  # "generated" or "shared"
    split: str  # "train" or "test"
    sha256: str
    x: np.ndarray
    kind: np.ndarray  # per row: attack kind, "" for benign
    src: np.ndarray  # per row: source address text

    @property
    def y(self) -> np.ndarray:
        return np.asarray(self.kind != "", dtype=np.int32)


def sha256_path(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_capture(
    path: Path,
    group: str,
    split: str,
    attackers: dict[str, str],
    ignore: set[str],
    victims: dict[str, str] | None = None,
) -> CaptureData:
    """Extract flows from one capture and label them."""
    from services.sniffer.flows import extract_flows

    ex = extract_flows([path])
    if ex.error is not None:
        raise ex.error
    c = DetectorSettings().context
    tracker = ContextTracker(c.window_s, c.max_sources, c.max_flows_per_source)
    records = list(ex.records)
    x = feature_matrix(records, tracker) if records else np.zeros((0, 62))
    kinds, srcs, keep = [], [], []
    for rec in records:
        src, dst = ip_text(rec.key.src_addr), ip_text(rec.key.dst_addr)
        keep.append(src not in ignore or src in attackers)
        if src in attackers:
            kinds.append(attackers[src])
        elif victims and dst in victims:
            kinds.append(victims[dst])
        else:
            kinds.append("")
        srcs.append(src)
    mask = np.asarray(keep, dtype=bool)
    return CaptureData(
        path.name,
        group,
        split,
        sha256_path(path),
        x[mask] if len(mask) else x,
        np.asarray(kinds, dtype=object)[mask] if len(mask) else np.zeros(0, dtype=object),
        np.asarray(srcs, dtype=object)[mask] if len(mask) else np.zeros(0, dtype=object),
    )


def load_generated(folder: Path) -> list[CaptureData]:
    labels = json.loads((folder / "labels.json").read_text())
    return [
        load_capture(
            folder / item["file"], "generated", item["split"], dict(item["attackers"]), set(item["ignore"])
        )
        for item in labels
    ]


def load_shared(folder: Path) -> list[CaptureData]:
    """The public captures labelled by TRUTH.json (all used as training data; see the model cards)."""
    truth = json.loads((folder / "TRUTH.json").read_text())
    out = []
    for item in truth:
        kind = item.get("attack_type") or ""
        attackers = {a: kind for a in item.get("attackers") or []} if item["kind"] == "attack" else {}
        victims = None
        if item.get("score_by") == "victim":
            victims = {v: kind for v in item.get("victims") or []}
            attackers = {}
        out.append(
            load_capture(
                folder / item["file"], "shared", "train", attackers, set(item.get("ignore") or []), victims
            )
        )
    return out
