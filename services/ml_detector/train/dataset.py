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
from services.sniffer.config import FlowSettings, SnifferSettings

# What the live lab's sniffer uses to score quickly (DESIGN.md section 4 settings): no close linger,
# unanswered flows exported after 0.1 s. Then the ACK that ends a FIN exchange arrives as a flow of
# its own, an RST after a close too, and a SYN whose answer is slow is a half-open flow.
LIVE_FLOWS = FlowSettings(tcp_close_linger_s=0.0, half_open_timeout_s=0.1)
LIVE_SUFFIX = " [live sniffer]"


@dataclass(frozen=True)
class CaptureData:
    name: str
    group: str  # "generated", "netns" (real tools in namespaces) or "shared"
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
    benign: set[str] | None = None,
    flows: FlowSettings | None = None,
    name: str | None = None,
) -> CaptureData:
    """Extract flows from one capture and label them.

    With `benign`, only flows sent by an attacker or a benign address are kept (a namespace capture
    also holds the victim's ICMP errors and IPv6 link-local chatter, which no namespace "sent").
    `flows` replaces the extractor's flow settings (timeouts, close linger)."""
    from services.sniffer.flows import extract_flows

    ex = extract_flows([path], SnifferSettings(flows=flows) if flows is not None else None)
    if ex.error is not None:
        raise ex.error
    c = DetectorSettings().context
    tracker = ContextTracker(c.window_s, c.max_sources, c.max_flows_per_source)
    records = list(ex.records)
    x = feature_matrix(records, tracker) if records else np.zeros((0, 62))
    kinds, srcs, keep = [], [], []
    for rec in records:
        src, dst = ip_text(rec.key.src_addr), ip_text(rec.key.dst_addr)
        keep.append(
            (src not in ignore or src in attackers) and (benign is None or src in attackers or src in benign)
        )
        if src in attackers:
            kinds.append(attackers[src])
        elif victims and dst in victims:
            kinds.append(victims[dst])
        else:
            kinds.append("")
        srcs.append(src)
    mask = np.asarray(keep, dtype=bool)
    return CaptureData(
        name or path.name,
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


def load_netns(folder: Path) -> list[CaptureData]:
    """The real-tool namespace captures, each extracted twice: with the sniffer's default flow
    settings and with the live lab's short close linger and half-open timeout (LIVE_FLOWS)."""
    labels = json.loads((folder / "labels.json").read_text())
    out = []
    for item in labels:
        for flows, suffix in ((None, ""), (LIVE_FLOWS, LIVE_SUFFIX)):
            out.append(
                load_capture(
                    folder / item["file"],
                    "netns",
                    item["split"],
                    dict(item["attackers"]),
                    set(item["ignore"]),
                    benign=set(item["benign"]),
                    flows=flows,
                    name=item["file"] + suffix,
                )
            )
    return out


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
