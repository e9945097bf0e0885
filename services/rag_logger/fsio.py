"""Low-level durable file operations: new files, anonymous temp files, syncfs, directory fsync."""

from __future__ import annotations

import ctypes
import errno
import os
import resource

_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
# O_TMPFILE: a file with no name until linkat() gives it one, so a crash leaves no temp file at all.
O_TMPFILE: int = getattr(os, "O_TMPFILE", 0o20200000 | os.O_DIRECTORY)
_OPEN_ANON = O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_AT_EMPTY_PATH = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = _libc.syncfs
_syncfs.argtypes = [ctypes.c_int]
_syncfs.restype = ctypes.c_int
_linkat = _libc.linkat
_linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_linkat.restype = ctypes.c_int


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _filled(fd: int, data: bytes) -> int:
    """Write all of `data` to the new file `fd` and return it open; closed again on failure."""
    try:
        n = os.write(fd, data)
        if n != len(data):
            write_all(fd, memoryview(data)[n:])
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new(path: str, data: bytes) -> int:
    """Create (or truncate) `path`, write all of `data`, and return the still-open descriptor."""
    return _filled(os.open(path, _OPEN_NEW, 0o644), data)


def write_anon(directory: str, data: bytes) -> int:
    """An unnamed file in `directory` (O_TMPFILE) holding `data`; open descriptor returned."""
    return _filled(os.open(directory, _OPEN_ANON, 0o644), data)


def link_fd(fd: int, path: str, empty_path: bool = False) -> None:
    """Give the O_TMPFILE file `fd` the name `path` (FileExistsError when the name is taken).

    linkat via /proc/self/fd needs no privilege; `empty_path` links the descriptor itself
    (AT_EMPTY_PATH: needs CAP_DAC_READ_SEARCH, ~7 us less kernel time per file than the /proc walk).
    """
    dst = os.fsencode(path)
    if empty_path:
        rc = _linkat(fd, b"", _AT_FDCWD, dst, _AT_EMPTY_PATH)
    else:
        rc = _linkat(_AT_FDCWD, b"/proc/self/fd/%d" % fd, _AT_FDCWD, dst, _AT_SYMLINK_FOLLOW)
    if rc:
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), path)
        raise OSError(err, os.strerror(err), path)


def syncfs(fd: int) -> None:
    """Write back and commit everything dirty on the filesystem holding `fd` (one call per group).

    Errors of write-back since `fd` was opened are reported (Linux >= 5.8), so open it first.
    """
    if _syncfs(fd):
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


def fsync_dir(path: str) -> None:
    """Make the directory's entries (creates, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def raise_fd_limit(want: int = 65_536) -> int:
    """Raise the soft open-file limit towards the hard one (at most `want`); returns the soft limit.

    Group commit holds a group's files open until their data is synced; the common default soft
    limit of 1,024 would cut groups to a few hundred files, so the writer asks for what it may have.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def free_bytes(path: str) -> int:
    """Space available to unprivileged writers on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
