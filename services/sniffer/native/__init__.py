"""A C helper for the pcap record walk, compiled on first use with the system C compiler.

Optional: when no compiler is present or the build fails, `pcap_walk()` returns None and the
caller uses the Python walk (same result, slower). The shared object is cached under
$XDG_CACHE_HOME/ml-defender (or ~/.cache/ml-defender), keyed by the source's hash.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("pcapwalk.c")
_lib: ctypes.CDLL | None = None
_tried = False
_CHUNK = 1 << 20  # offsets per call


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ml-defender"


def _build() -> ctypes.CDLL | None:
    if os.environ.get("MLD_SNIFFER_NO_NATIVE"):
        return None
    code = SOURCE.read_bytes()
    so = _cache_dir() / f"pcapwalk-{hashlib.sha256(code).hexdigest()[:16]}.so"
    if not so.exists():
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            return None
        so.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=so.parent) as tmp:
            out = Path(tmp) / so.name
            res = subprocess.run(
                [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(SOURCE)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if res.returncode != 0:
                log.warning(
                    "pcap walk helper not built (%s); using the Python walk", res.stderr.strip()[:200]
                )
                return None
            os.replace(out, so)  # atomic: concurrent builders never load a partial file
    lib = ctypes.CDLL(str(so))
    fn = lib.mld_pcap_walk
    fn.restype = ctypes.c_long
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_int,
        ctypes.c_long,
        ctypes.c_void_p,
        ctypes.c_long,
        ctypes.POINTER(ctypes.c_long),
    ]
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            _lib = _build()
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("pcap walk helper unavailable (%s); using the Python walk", exc)
            _lib = None
    return _lib


def pcap_walk(
    buf: npt.NDArray[np.uint8], start: int, big_endian: bool, max_incl: int
) -> tuple[npt.NDArray[np.int64], int] | None:
    """(record offsets, offset where the walk stopped), or None when the helper is unavailable."""
    lib = _library()
    if lib is None:
        return None
    n = len(buf)
    parts: list[npt.NDArray[np.int64]] = []
    stop = ctypes.c_long(start)
    off = start
    ptr = buf.ctypes.data if n else 0
    while True:
        out = np.empty(_CHUNK, dtype=np.int64)
        count = lib.mld_pcap_walk(
            ptr, n, off, int(big_endian), max_incl, out.ctypes.data, _CHUNK, ctypes.byref(stop)
        )
        parts.append(out[:count])
        off = stop.value
        if count < _CHUNK:
            break
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), off
