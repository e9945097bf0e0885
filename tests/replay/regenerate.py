#!/usr/bin/env python3
"""Regenerate tests/replay/cases/<name>/ (expected flows, counts, fast-detector results) from the
shared captures. Run it after a deliberate change to the flow rules, then review the diff:

    .venv/bin/python tests/replay/regenerate.py [NAME ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

from sniffer_cases import case_name, write_case  # noqa: E402

from helpers import SHARED_PCAPS  # noqa: E402


def main(names: list[str]) -> int:
    pcaps = sorted(p for p in SHARED_PCAPS.glob("*.pcap*"))
    if not pcaps:
        print(f"no captures in {SHARED_PCAPS} (set MLD_SHARED_PCAPS)", file=sys.stderr)
        return 1
    for pcap in pcaps:
        if names and case_name(pcap) not in names:
            continue
        d = write_case(pcap)
        print(f"wrote {d.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
