"""Errors of the etcd client: each says what failed, on which key or endpoint, and how to fix it."""

from __future__ import annotations

from libs.common.errors import ConfigError, MLDefenderError


class EtcdError(MLDefenderError):
    """Base of every etcd client error."""


class EtcdUnavailable(EtcdError):
    """etcd did not answer (down, wrong address, timeout); callers retry with backoff."""


class EnvelopeError(EtcdError):
    """A stored value cannot be decoded: not JSON, bad envelope, wrong key, tampered ciphertext."""


class KeyFileError(ConfigError):
    """The encryption key file is missing, malformed or readable by other users."""


class CasConflict(EtcdError):
    """A compare-and-swap lost: the key changed since it was read."""
