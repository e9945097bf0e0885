"""Errors of the ml-detector, on the shared hierarchy (exit codes are decided in cli.py)."""

from __future__ import annotations

from libs.common.errors import ConfigError, InputError


class ModelError(ConfigError):
    """A model file that is missing, corrupt, or incompatible with the detector's features."""


class EngineError(ConfigError):
    """An inference engine that cannot load or disagrees with LightGBM on the embedded sample."""


class CaptureError(InputError):
    """A capture given to `analyze` that cannot be read (missing, not a pcap, truncated)."""
