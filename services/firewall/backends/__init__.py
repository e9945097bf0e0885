"""Firewall backends behind one small interface, chosen by name from settings (`backend`)."""

from __future__ import annotations

from collections.abc import Callable

from services.firewall.backends.base import Backend
from services.firewall.config import FirewallSettings
from services.firewall.errors import BackendUnavailable


def _nftables(s: FirewallSettings) -> Backend:
    from services.firewall.backends.nftables import NftablesBackend

    return NftablesBackend(s.table, s.chain_priority, s.nft_interface)


def _ipset(s: FirewallSettings) -> Backend:
    from services.firewall.backends.ipset import IpsetBackend

    return IpsetBackend(s.table)


def _dry_run(s: FirewallSettings) -> Backend:
    from services.firewall.backends.dry_run import DryRunBackend

    return DryRunBackend(s.dry_run_journal)


BACKENDS: dict[str, Callable[[FirewallSettings], Backend]] = {
    "nftables": _nftables,
    "ipset": _ipset,
    "dry_run": _dry_run,
}


def open_backend(settings: FirewallSettings) -> Backend:
    """The backend named in settings; raises BackendUnavailable when it cannot run here."""
    factory = BACKENDS.get(settings.backend)
    if factory is None:
        raise BackendUnavailable(
            f"unknown backend {settings.backend!r}", "backend", f"choose one of {', '.join(BACKENDS)}"
        )
    return factory(settings)


__all__ = ["BACKENDS", "Backend", "open_backend"]
