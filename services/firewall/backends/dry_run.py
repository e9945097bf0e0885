"""dry_run backend: applies nothing to the kernel; every transaction becomes one JSON line.

The journal is also its state: `read()` replays it, so a restart and the operator CLI see the same
bans a kernel would hold (each expiring at journal time + timeout).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from services.firewall.errors import BackendError
from services.firewall.model import Element, Op
from services.firewall.targets import Net, parse_allow_entries

log = logging.getLogger(__name__)


class DryRunBackend:
    """Logs and journals the transactions it would apply."""

    name = "dry_run"

    def __init__(self, journal: Path) -> None:
        self.journal = Path(journal)
        self._fh: object = None

    def setup(self) -> None:
        try:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            self.journal.touch(exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create the dry-run journal: {exc.strerror}", str(self.journal), "set dry_run_journal"
            ) from None

    def _write(self, doc: dict[str, object]) -> None:
        line = json.dumps(doc, separators=(",", ":")) + "\n"
        try:
            with self.journal.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise BackendError(
                f"cannot append to the dry-run journal: {exc.strerror}",
                str(self.journal),
                "check disk and permissions",
            ) from None

    def apply(self, ops: Sequence[Op]) -> None:
        doc = {"ts_ns": time.time_ns(), "backend": "dry_run", "ops": [op.to_dict() for op in ops]}
        self._write(doc)
        log.info(
            "dry-run transaction",
            extra={"ops": len(ops), "journal": str(self.journal), "first": [op.to_dict() for op in ops[:10]]},
        )

    def read(self) -> list[Element]:
        now_ns = time.time_ns()
        state: dict[Net, tuple[int, int, int]] = {}  # net -> (timeout_ms, expires_at_ns, offences)
        try:
            lines = self.journal.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        for n, line in enumerate(lines, 1):
            try:
                doc = json.loads(line)
                ts = int(doc["ts_ns"])
                if doc.get("flush"):
                    state.clear()
                    continue
                for op in doc["ops"]:
                    net = parse_allow_entries([op["target"]], f"{self.journal}:{n}")[0]
                    if op["op"] == "add":
                        t = int(op["timeout_ms"])
                        state[net] = (t, ts + t * 1_000_000, int(op.get("offences", 1)))
                    else:
                        state.pop(net, None)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "dry-run journal line skipped: %s", exc, extra={"line": n, "journal": str(self.journal)}
                )
        return [
            Element(net, t, (exp - now_ns) // 1_000_000, o)
            for net, (t, exp, o) in state.items()
            if exp > now_ns
        ]

    def flush(self) -> int:
        n = len(self.read())
        self._write({"ts_ns": time.time_ns(), "backend": "dry_run", "flush": True, "ops": []})
        return n

    def close(self) -> None:
        pass
