"""Handing free heap memory back to the kernel after a burst (glibc malloc_trim)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> bool:
    """Return the C heap's free pages to the kernel (glibc malloc_trim); False when unavailable.

    A backlog holds thousands of multi-KB pair buffers (glibc, not Python's small-object allocator)
    at once; once they are freed, glibc keeps most of those pages because later allocations sit
    above them in the heap, so RSS would step up after every backlog without this.
    """
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
