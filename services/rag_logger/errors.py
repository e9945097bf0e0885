"""Errors of the rag-logger: storage failures (disk full, read-only, permissions) and bad artifacts."""

from __future__ import annotations

import errno

from libs.common.errors import InputError, MLDefenderError

_REASONS = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EROFS: "read_only",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
}

_FIXES = {
    "disk_full": "free space on the artifacts filesystem (or lower storage.min_free_bytes); writing resumes by itself",
    "read_only": "remount the artifacts filesystem read-write; writing resumes by itself",
    "permission": "give the service's user write access to the artifacts directory; writing resumes by itself",
    "io_error": "check the artifacts filesystem (dmesg, df); writing is retried",
    "writer_process": "nothing to do: the writer process is restarted and the batch retried; "
    "if it keeps exiting, check the log and dmesg (out of memory?)",
    "locked": "stop the other rag-logger writing to this artifacts directory (or give each its own "
    "artifacts_root); writing starts once the lock is free",
}


class RagLoggerError(MLDefenderError):
    """Base of the rag-logger's errors."""


class StorageError(RagLoggerError):
    """The artifacts directory cannot take writes now; the writer blocks and retries.

    `reason` is one of disk_full, read_only, permission, io_error, writer_process, locked (the label
    used in metrics).
    """

    def __init__(self, reason: str, what: str, where: str) -> None:
        self.reason = reason
        super().__init__(what, where, _FIXES.get(reason, _FIXES["io_error"]))

    @classmethod
    def from_os(cls, exc: OSError, where: str) -> StorageError:
        reason = _REASONS.get(exc.errno or 0, "io_error")
        return cls(reason, f"{reason.replace('_', ' ')}: {exc.strerror or exc}", where)


class ArtifactError(InputError):
    """An artifact (or a directory given to `verify`) that cannot be read."""
