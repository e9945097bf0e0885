"""How values are stored: plain JSON, or a small JSON envelope that says how the payload is packed.

A plain value is the JSON document itself, so `etcdctl put KEY '{"a": 1}'` just works. A packed value
is a JSON object with `"mld_envelope": 1`, naming its `compression` ("zstd" or "none") and
`encryption` ("chacha20-poly1305" or "none"); readers never guess. Encryption binds the etcd key
name and the envelope header as associated data, so a ciphertext copied to another key or with an
edited header fails authentication instead of decoding to something else.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from libs.etcd_client.crypto import SecretKey
from libs.etcd_client.errors import EnvelopeError

ENVELOPE_TAG = "mld_envelope"
ENVELOPE_VERSION = 1
CIPHER = "chacha20-poly1305"
COMPRESSOR = "zstd"
MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024


def _aad(key: str, header: dict[str, Any]) -> bytes:
    fields = {k: header[k] for k in sorted(header) if k not in ("payload", "nonce")}
    return key.encode() + b"\0" + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def encode_value(
    key: str, value: Any, *, encrypt: bool = False, compress: bool = False, secret: SecretKey | None = None
) -> bytes:
    """Serialize `value` as JSON, optionally compressed and/or encrypted inside an envelope."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    if not encrypt and not compress:
        return data
    header: dict[str, Any] = {
        ENVELOPE_TAG: ENVELOPE_VERSION,
        "compression": COMPRESSOR if compress else "none",
        "encryption": CIPHER if encrypt else "none",
    }
    if compress:
        data = zstandard.ZstdCompressor(level=3).compress(data)
    if encrypt:
        if secret is None:
            raise EnvelopeError(
                "cannot encrypt: no encryption key loaded", key, "pass --key-file (or set etcd.key_file)"
            )
        header["key_id"] = secret.key_id
        nonce = os.urandom(12)
        data = ChaCha20Poly1305(secret.material).encrypt(nonce, data, _aad(key, header))
        header["nonce"] = base64.b64encode(nonce).decode()
    header["payload"] = base64.b64encode(data).decode()
    return json.dumps(header, sort_keys=True).encode()


def describe_value(raw: bytes) -> dict[str, Any]:
    """What a stored value is (plain/compressed/encrypted, key id), without decrypting it."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"format": "invalid"}
    if isinstance(doc, dict) and ENVELOPE_TAG in doc:
        return {
            "format": "envelope",
            "compression": doc.get("compression"),
            "encryption": doc.get("encryption"),
            "key_id": doc.get("key_id"),
        }
    return {"format": "plain"}


def decode_value(key: str, raw: bytes, secret: SecretKey | None = None) -> Any:
    """The JSON value stored at `key`, unpacking an envelope when there is one."""
    try:
        doc = json.loads(raw)
    except UnicodeDecodeError:
        raise EnvelopeError("value is not UTF-8 text", key, "store a JSON document") from None
    except json.JSONDecodeError as exc:
        raise EnvelopeError(
            f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            key,
            "fix the JSON syntax (check with `python -m json.tool`)",
        ) from None
    if not (isinstance(doc, dict) and ENVELOPE_TAG in doc):
        return doc
    if doc.get(ENVELOPE_TAG) != ENVELOPE_VERSION:
        raise EnvelopeError(
            f"unsupported envelope version {doc.get(ENVELOPE_TAG)!r}",
            key,
            "write it with this version's mld-config",
        )
    compression = doc.get("compression", "none")
    encryption = doc.get("encryption", "none")
    if compression not in ("none", COMPRESSOR) or encryption not in ("none", CIPHER):
        raise EnvelopeError(
            f"unknown envelope packing compression={compression!r} encryption={encryption!r}",
            key,
            f"use compression none|{COMPRESSOR} and encryption none|{CIPHER}",
        )
    try:
        data = base64.b64decode(doc["payload"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise EnvelopeError(
            "envelope payload missing or not base64", key, "rewrite the value with mld-config"
        ) from None
    if encryption == CIPHER:
        wanted = doc.get("key_id", "?")
        if secret is None:
            raise EnvelopeError(
                f"value is encrypted (key id {wanted}) but no key file is configured",
                key,
                "set etcd.key_file / --key-file to the 0600 key file",
            )
        if secret.key_id != wanted:
            raise EnvelopeError(
                f"value is encrypted with key id {wanted}, the loaded key has id {secret.key_id} (wrong key)",
                key,
                "point the key file at the key used to write this value, or rewrite the value",
            )
        try:
            nonce = base64.b64decode(doc["nonce"], validate=True)
            data = ChaCha20Poly1305(secret.material).decrypt(nonce, data, _aad(key, doc))
        except (KeyError, TypeError, ValueError, InvalidTag):
            raise EnvelopeError(
                "encrypted value failed authentication (tampered, moved from another key, or wrong key)",
                key,
                "rewrite the value with mld-config set --encrypt",
            ) from None
    if compression == COMPRESSOR:
        try:
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DECOMPRESSED_BYTES)
        except zstandard.ZstdError as exc:
            raise EnvelopeError(f"zstd payload is corrupt: {exc}", key, "rewrite the value") from None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EnvelopeError(
            "envelope payload is not JSON", key, "rewrite the value with mld-config"
        ) from None
