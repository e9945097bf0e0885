"""Precision@10 of the question set over its corpus: used by the tests and runnable by hand.

.venv/bin/python tests/rag/rag_questions.py     # prints one line per question and the means
"""

from __future__ import annotations

import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.rag.config import RagSettings
from services.rag.core import RagCore
from services.rag.corpus import write_corpus

QUESTIONS = Path(__file__).with_name("questions.yaml")


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(QUESTIONS.read_text())
    return data


def now_ns(spec: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(spec["now"].replace("Z", "+00:00")).timestamp()) * 1_000_000_000


def build_corpus(root: Path, spec: dict[str, Any]) -> None:
    gen = write_corpus(root, spec["events"], spec["seed"], now_ns(spec), spec["days"])
    assert gen[0].event.event_id == spec["first_event_id"], "corpus generator changed: run make_questions.py"
    assert gen[-1].event.event_id == spec["last_event_id"], "corpus generator changed: run make_questions.py"


def settings(tmp: Path) -> RagSettings:
    return RagSettings.model_validate(
        {
            "index": {"dir": str(tmp / "index")},
            "ingest": {"artifacts_root": str(tmp / "artifacts")},
            "metrics": {"port": 0},
        }
    )


def precision_at_10(core: RagCore, q: dict[str, Any], now: int) -> tuple[float, list[str]]:
    ans = core.engine.query(q["question"], now, 10)
    got = [h["event_id"] for h in ans["results"]]
    relevant = set(q["relevant"])
    denom = min(10, len(relevant))
    return (sum(1 for e in got[:10] if e in relevant) / denom if denom else 0.0), got


def answers(core: RagCore, data: dict[str, Any]) -> dict[str, list[str]]:
    now = now_ns(data["corpus"])
    return {
        q["question"]: [h["event_id"] for h in core.engine.query(q["question"], now, 10)["results"]]
        for q in data["questions"]
    }


def main() -> None:
    data = load()
    with tempfile.TemporaryDirectory() as tmp:
        build_corpus(Path(tmp) / "artifacts", data["corpus"])
        core = RagCore(settings(Path(tmp)))
        core.catch_up()
        now = now_ns(data["corpus"])
        scores: dict[str, list[float]] = {"filter": [], "semantic": []}
        for q in data["questions"]:
            p, _got = precision_at_10(core, q, now)
            scores[q["kind"]].append(p)
            print(f"{p:4.2f} {q['kind']:8} {q['question']}")
        for kind, vals in scores.items():
            print(f"mean precision@10 {kind}: {sum(vals) / len(vals):.3f} over {len(vals)} questions")
        core.close()


if __name__ == "__main__":
    main()
