"""Envelope and key-file rules: readers never guess the packing, wrong keys and leaky files are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from libs.etcd_client.crypto import generate_key, load_key
from libs.etcd_client.envelope import decode_value, describe_value, encode_value
from libs.etcd_client.errors import EnvelopeError, KeyFileError

pytestmark = pytest.mark.unit
DOC = {"thresholds": {"drop": 0.7, "alert": 0.5}, "note": "secret-marker-123" * 20}


@pytest.fixture
def key(tmp_path: Path):
    return generate_key(tmp_path / "k.key")


def test_plain_value_is_the_json_document() -> None:
    raw = encode_value("/p/config/x", DOC)
    assert json.loads(raw) == DOC
    assert decode_value("/p/config/x", raw) == DOC
    assert describe_value(raw) == {"format": "plain"}


@pytest.mark.parametrize(("encrypt", "compress"), [(False, True), (True, False), (True, True)])
def test_envelope_round_trip_and_plaintext_hidden(key, encrypt: bool, compress: bool) -> None:
    raw = encode_value("/p/config/x", DOC, encrypt=encrypt, compress=compress, secret=key)
    info = describe_value(raw)
    assert info["format"] == "envelope"
    assert info["compression"] == ("zstd" if compress else "none")
    assert info["encryption"] == ("chacha20-poly1305" if encrypt else "none")
    assert decode_value("/p/config/x", raw, key) == DOC
    if encrypt:
        assert b"secret-marker" not in raw and key.material.hex().encode() not in raw
    if compress and not encrypt:
        assert len(raw) < len(json.dumps(DOC))


def test_wrong_key_missing_key_moved_value_and_tampering_are_refused(tmp_path: Path, key) -> None:
    raw = encode_value("/p/config/x", DOC, encrypt=True, secret=key)
    other = generate_key(tmp_path / "other.key")
    with pytest.raises(EnvelopeError, match="wrong key"):
        decode_value("/p/config/x", raw, other)
    with pytest.raises(EnvelopeError, match="no key file"):
        decode_value("/p/config/x", raw, None)
    with pytest.raises(EnvelopeError, match="failed authentication"):
        decode_value("/p/config/y", raw, key)  # copied to another key
    env = json.loads(raw)
    env["compression"] = "zstd"  # header edited: bound as associated data
    with pytest.raises(EnvelopeError, match="failed authentication"):
        decode_value("/p/config/x", json.dumps(env).encode(), key)


def test_not_json_and_bad_envelopes_say_what_and_where() -> None:
    with pytest.raises(EnvelopeError, match=r"/p/k: value is not JSON.*line 1"):
        decode_value("/p/k", b"{nope")
    with pytest.raises(EnvelopeError, match="unsupported envelope version"):
        decode_value("/p/k", b'{"mld_envelope": 9}')
    with pytest.raises(EnvelopeError, match="unknown envelope packing"):
        decode_value("/p/k", b'{"mld_envelope": 1, "compression": "lz4", "payload": ""}')
    with pytest.raises(EnvelopeError, match="cannot encrypt"):
        encode_value("/p/k", {}, encrypt=True)


def test_key_file_permissions_and_format(tmp_path: Path) -> None:
    p = tmp_path / "k.key"
    key = generate_key(p)
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert load_key(p) == key and "material" not in repr(key)
    os.chmod(p, 0o644)
    with pytest.raises(KeyFileError, match=r"readable by group or others \(mode 0644\).*chmod 600"):
        load_key(p)
    bad = tmp_path / "bad.key"
    bad.write_text("short")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="64 hex characters"):
        load_key(bad)
    with pytest.raises(KeyFileError, match="not found"):
        load_key(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(p)
