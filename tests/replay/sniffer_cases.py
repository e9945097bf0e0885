"""What a sniffer replay case is: the records, fast-detector results and counts of one shared
capture, in the forms `regenerate.py` writes and `test_replay.py` compares."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from libs.common.events import features_dict, flow_dict, ip_text
from services.sniffer.config import SnifferSettings
from services.sniffer.fast_detector import FastDetector
from services.sniffer.flows import extract_flows

CASES = Path(__file__).resolve().parent / "cases"
SETTINGS = SnifferSettings.model_validate({"node_id": "replay"})


def case_name(pcap: Path) -> str:
    return pcap.name.rsplit(".", 1)[0]


def compute(pcap: Path) -> dict[str, Any]:
    """Everything a case records about one capture, with the default settings."""
    res = extract_flows([pcap], SETTINGS)
    if res.error is not None:
        raise RuntimeError(res.error.message)
    flows = []
    for rec in res.records:
        doc = flow_dict(rec)
        # zeros left out (a missing feature reads as 0): the expected files stay small and readable
        doc["features"] = {k: v for k, v in features_dict(rec.features).items() if v}
        flows.append(doc)
    fired: dict[str, set[str]] = defaultdict(set)
    for rec, fast in zip(res.records, FastDetector(SETTINGS.fast_detector).observe(res.records), strict=True):
        fired[ip_text(rec.key.src_addr)].update(fast.rules)
    summary = {
        "pcap": pcap.name,
        "packets": res.stats["packets"],
        "bytes": res.stats["bytes"],
        "flows": res.stats["flows"],
        "malformed": res.stats["malformed"],
        "end_reasons": res.stats["end_reasons"],
        "fast_rules_by_source": {src: sorted(r) for src, r in sorted(fired.items()) if r},
    }
    return {"flows": flows, "summary": summary}


def write_case(pcap: Path) -> Path:
    data = compute(pcap)
    d = CASES / case_name(pcap)
    d.mkdir(parents=True, exist_ok=True)
    with (d / "expected_flows.jsonl").open("w") as f:
        for doc in data["flows"]:
            f.write(json.dumps(doc, sort_keys=True) + "\n")
    (d / "case.json").write_text(json.dumps(data["summary"], indent=2, sort_keys=True) + "\n")
    return d


def read_case(d: Path) -> dict[str, Any]:
    flows = [json.loads(line) for line in (d / "expected_flows.jsonl").read_text().splitlines() if line]
    return {"flows": flows, "summary": json.loads((d / "case.json").read_text())}
