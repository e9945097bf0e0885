"""Errors of the rag service; each says what failed, where and how to fix it."""

from __future__ import annotations

from libs.common.errors import ConfigError, InputError, MLDefenderError, UsageError


class RagError(MLDefenderError):
    """Base of the rag service's own failures (exit 1)."""


class EmbedderError(RagError):
    """The embedding model cannot be found, built or run."""


class IndexError_(RagError):
    """The index cannot be read or written (a corrupt index is rebuilt, not reported)."""


class ArtifactError(InputError):
    """An artifact pair that cannot be read or does not agree with itself."""


class EventNotFound(RagError):
    """An event id the index does not hold."""


class QueryError(UsageError):
    """A question or option that cannot be turned into a search."""


class TuningError(RagError):
    """A tuning command that cannot be applied (out of bounds, etcd refused, concurrent edit)."""


class ServiceUnavailable(RagError):
    """The running service did not answer on its query socket."""


__all__ = [
    "ArtifactError",
    "ConfigError",
    "EmbedderError",
    "EventNotFound",
    "IndexError_",
    "QueryError",
    "RagError",
    "ServiceUnavailable",
    "TuningError",
]
