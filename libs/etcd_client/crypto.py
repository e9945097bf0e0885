"""The encryption key: 32 bytes in a file only its owner can read (mode 0600), never stored in etcd.

The file holds 64 hex characters (what `mld-config keygen` writes) or 32 raw bytes. A key file that
group or others can read is refused: a leaked key decrypts every encrypted configuration value.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from libs.etcd_client.errors import KeyFileError

KEY_BYTES = 32


@dataclass(frozen=True)
class SecretKey:
    """A ChaCha20-Poly1305 key with a short public id (so a reader can tell which key a value needs)."""

    material: bytes
    key_id: str

    def __repr__(self) -> str:  # never print the key material
        return f"SecretKey(key_id={self.key_id!r})"


def key_id_of(material: bytes) -> str:
    """First 16 hex digits of SHA-256 over a domain tag and the key; reveals nothing usable."""
    return hashlib.sha256(b"mld-config-key-id\0" + material).hexdigest()[:16]


def load_key(path: Path | str) -> SecretKey:
    """Read and check a key file; refuse it when group or others have any access."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyFileError(
            "encryption key file not found", str(p), "create one with `mld-config keygen PATH`"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(
            "encryption key path is not a regular file", str(p), "point key_file at the key file"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"encryption key file is readable by group or others (mode {mode:04o})",
            str(p),
            f"run `chmod 600 {p}` (and rotate the key if others may have read it)",
        )
    raw = p.read_bytes()
    text = raw.strip()
    material: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        try:
            material = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            material = None
    if material is None and len(raw) == KEY_BYTES:
        material = raw
    if material is None:
        raise KeyFileError(
            f"encryption key file must hold 64 hex characters or 32 raw bytes (found {len(raw)} bytes)",
            str(p),
            "create a new key with `mld-config keygen PATH`",
        )
    return SecretKey(material, key_id_of(material))


def generate_key(path: Path | str) -> SecretKey:
    """Write a fresh random key as hex, created with mode 0600 (never briefly world-readable)."""
    p = Path(path)
    material = os.urandom(KEY_BYTES)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            "key file already exists", str(p), "remove it first or choose another path"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(material.hex() + "\n")
    return SecretKey(material, key_id_of(material))
