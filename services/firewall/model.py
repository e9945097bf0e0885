"""The data passed between the planner and the backends: kernel elements and set operations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from services.firewall.targets import Net, family, is_host, net_text

COMMENT_PREFIX = "mld o="


@dataclass(frozen=True)
class Element:
    """One ban as the kernel holds it: remaining time comes from the kernel, not from memory."""

    net: Net
    timeout_ms: int
    expires_ms: int
    offences: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "target": net_text(self.net),
            "family": family(self.net),
            "kind": "host" if is_host(self.net) else "cidr",
            "timeout_s": round(self.timeout_ms / 1000, 3),
            "expires_s": round(self.expires_ms / 1000, 3),
            "offences": self.offences,
        }


class Op(NamedTuple):
    """One set operation in a transaction (a NamedTuple: one is built per request, on the hot path).

    `replace` means the element may already exist, so its timeout must be re-armed (the backend
    deletes and re-adds it inside the same transaction); a plain add of an existing element would
    keep the old expiry.
    """

    kind: Literal["add", "delete"]
    net: Net
    timeout_ms: int = 0
    offences: int = 1
    replace: bool = False
    captured_ns: int = 0
    received: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"op": self.kind, "target": net_text(self.net)}
        if self.kind == "add":
            doc.update(timeout_ms=self.timeout_ms, offences=self.offences, replace=self.replace)
        elif self.reason:
            doc["reason"] = self.reason
        return doc


def comment_for(offences: int) -> str:
    """Offence count kept in the element's comment so escalation survives a restart."""
    return f"{COMMENT_PREFIX}{offences}"


def offences_from_comment(comment: str | None) -> int:
    if comment and comment.startswith(COMMENT_PREFIX):
        try:
            return max(1, int(comment[len(COMMENT_PREFIX) :]))
        except ValueError:
            return 1
    return 1
