"""The interface every backend implements: create its objects, read the kernel, apply a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.firewall.model import Element, Op


class Backend(Protocol):
    """One kernel mechanism (nftables sets, ipset + iptables, or a journal for dry runs)."""

    name: str

    def setup(self) -> None:
        """Create the table, sets and drop rules when missing; never empties existing sets."""

    def read(self) -> list[Element]:
        """Every ban the kernel holds now, with its remaining time."""
        ...

    def apply(self, ops: Sequence[Op]) -> None:
        """Apply `ops` as one transaction; raise BackendError when the kernel refuses it."""

    def flush(self) -> int:
        """Remove every ban (operator command only); returns how many were removed."""
        ...

    def close(self) -> None:
        """Release handles (library contexts, files)."""
