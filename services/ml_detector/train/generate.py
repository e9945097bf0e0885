"""The training captures `make train` makes itself: one pcap per (behaviour, seed) plus a labels file.

Each capture is 3 minutes of a small network: 3-6 benign hosts doing ordinary things, and (except
in benign-only captures) one attacker doing one attack kind. Labels are by sending address, as a
capture made in network namespaces would be labelled by the namespace that sent it. The plan is
fixed (seeds derive from the capture name), so the same code always writes the same bytes; their
sha256 is recorded in the training report.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from services.ml_detector.train.pcapgen import Capture
from services.ml_detector.train.scenarios import ATTACKS, LAN, benign_host

BASE_TIME = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DURATION_S = 180.0
SEEDS_PER_ATTACK = 4  # seed 3 is held out for evaluation
BENIGN_CAPTURES = 10  # the last 3 are held out


@dataclass(frozen=True)
class Planned:
    name: str
    attack: str | None
    seed: int
    split: str  # "train" or "test"


def plan() -> list[Planned]:
    out = []
    for kind in sorted(ATTACKS):
        for s in range(SEEDS_PER_ATTACK):
            out.append(Planned(f"gen-{kind}-{s}", kind, s, "test" if s == SEEDS_PER_ATTACK - 1 else "train"))
    for s in range(BENIGN_CAPTURES):
        out.append(Planned(f"gen-benign-{s}", None, s, "test" if s >= BENIGN_CAPTURES - 3 else "train"))
    return out


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def make_capture(p: Planned, out_dir: Path) -> dict[str, object]:
    """Write `<name>.pcap` and return its labels (attackers by address, attack kind, split, sha256)."""
    r = random.Random(_seed(p.name))
    cap = Capture()
    start = BASE_TIME + 86400 * (p.seed + 1) + r.uniform(0, 3600)
    hosts = [LAN + str(h) for h in r.sample(range(10, 199), r.randint(3, 6))]
    for h in hosts:
        benign_host(cap, r, h, start, DURATION_S)
    attackers: dict[str, str] = {}
    if p.attack is not None:
        atk = (
            LAN + str(r.randint(200, 250))
            if r.random() < 0.6
            else f"198.19.{r.randint(200, 250)}.{r.randint(1, 254)}"
        )
        ATTACKS[p.attack](cap, r, atk, start + r.uniform(5, 60), DURATION_S - 60)
        attackers[atk] = p.attack
    path = out_dir / f"{p.name}.pcap"
    packets = cap.write(path)
    return {
        "file": path.name,
        "attackers": attackers,
        "ignore": [],
        "split": p.split,
        "packets": packets,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def generate(out_dir: Path, only: list[Planned] | None = None) -> list[dict[str, object]]:
    """Write every planned capture and `labels.json` into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [make_capture(p, out_dir) for p in (only if only is not None else plan())]
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=1))
    return labels
