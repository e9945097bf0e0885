"""Errors of the firewall service, each saying what failed, where and how to fix it.

Exit codes are decided in cli.py from the base classes (ConfigError 2, InputError 1, others 1).
"""

from __future__ import annotations

from libs.common.errors import ConfigError, InputError, MLDefenderError


class FirewallError(MLDefenderError):
    """Base of the firewall's runtime errors."""


class BackendError(FirewallError):
    """The kernel (nft, ipset, iptables) refused a transaction or could not be read."""


class BackendUnavailable(ConfigError):
    """The chosen backend cannot run here (library or tool missing, no CAP_NET_ADMIN)."""


class TargetError(InputError):
    """A block request that is refused; `reason` is the metric label (invalid, allow_listed, ...)."""

    def __init__(self, reason: str, what: str, where: str = "", fix: str = "") -> None:
        self.reason = reason
        super().__init__(what, where, fix)
