"""Errors of the sniffer, on the shared hierarchy; exit codes are chosen only in cli.py."""

from __future__ import annotations

from libs.common.errors import ConfigError, InputError, MLDefenderError


class SnifferError(MLDefenderError):
    """Base of the sniffer's own errors."""


class CaptureFileError(InputError):
    """A pcap/pcapng file that is missing, not a capture, truncated or of an unsupported link type."""


class SourceError(ConfigError):
    """A capture source that is unknown or cannot be opened with the given settings."""
