"""Error hierarchy shared by every service.

Each error says what failed, where (a file, key or endpoint) and how to fix it, so that the CLI
can print one clear line and choose an exit code without a traceback.
"""

from __future__ import annotations


class MLDefenderError(Exception):
    """Base of every expected error; `exit_code` is what the CLI returns for it."""

    exit_code = 1

    def __init__(self, what: str, where: str = "", fix: str = "") -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return " — ".join(parts)


class ConfigError(MLDefenderError):
    """Settings that fail to load or validate."""

    exit_code = 2


class InputError(MLDefenderError):
    """Input data (a capture, a message, an artifact) that cannot be read."""


class UsageError(MLDefenderError):
    """Bad command-line arguments."""

    exit_code = 2
