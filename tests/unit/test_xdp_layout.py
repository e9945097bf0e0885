"""The ctypes mirrors in services/sniffer/libbpf.py match xdp_flow.h as the compiler laid it out.

Checked against the BTF of the compiled object (what the kernel and libbpf see), member by member:
name, offset and size. A field added to the header but not to Python fails here, not in a capture.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.sniffer import libbpf
from services.sniffer.bpf import build

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def btf_types() -> dict[str, dict[str, Any]]:
    if not (shutil.which("clang") and shutil.which("bpftool") and build.VMLINUX_BTF.exists()):
        pytest.skip("needs clang, bpftool and kernel BTF (make setup)")
    obj = build.build()
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(obj)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    doc = json.loads(out.stdout)
    return {str(t["id"]): t for t in doc["types"]} | {
        f"name:{t['name']}": t for t in doc["types"] if t.get("kind") == "STRUCT"
    }


def _btf_size(types: dict[str, dict[str, Any]], type_id: int) -> int:
    """Byte size of a BTF type, following typedefs, qualifiers and arrays."""
    t = types[str(type_id)]
    kind = t["kind"]
    if kind in ("TYPEDEF", "VOLATILE", "CONST", "RESTRICT"):
        return _btf_size(types, t["type_id"])
    if kind == "ARRAY":
        return int(t["nr_elems"]) * _btf_size(types, t["type_id"])
    if kind == "INT":
        return int(t["size"])
    return int(t["size"])


@pytest.mark.parametrize("name", sorted(libbpf.STRUCTS))
def test_ctypes_struct_matches_btf(btf_types: dict[str, dict[str, Any]], name: str) -> None:
    btf = btf_types.get(f"name:{name}")
    assert btf is not None, f"struct {name} missing from the object's BTF"
    cls = libbpf.STRUCTS[name]
    assert ctypes.sizeof(cls) == btf["size"], (
        f"sizeof({name}): ctypes {ctypes.sizeof(cls)} != C {btf['size']}"
    )
    c_fields = [
        (m["name"], m["bits_offset"] // 8, _btf_size(btf_types, m["type_id"])) for m in btf["members"]
    ]
    py_fields = [(fname, getattr(cls, fname).offset, getattr(cls, fname).size) for fname, *_ in cls._fields_]
    assert py_fields == c_fields, f"{name}: ctypes (name, offset, size) differ from the C layout"


def test_stat_names_match_header() -> None:
    """Counter indices in Python are the MLD_STAT_* numbers of the header."""
    header = (Path(build.SRC_DIR) / "xdp_flow.h").read_text()
    defined = {
        m.group(1).lower(): int(m.group(2)) for m in re.finditer(r"#define MLD_STAT_(\w+) (\d+)", header)
    }
    assert defined.pop("max") == libbpf.STAT_MAX
    assert {name: i for i, name in enumerate(libbpf.STAT_NAMES)} == defined


def test_malformed_names_are_the_decoders() -> None:
    """The kernel counts damage under the user-space decoder's reasons (one vocabulary)."""
    from services.sniffer.decode import MALFORMED_REASONS

    kernel = set(libbpf.MALFORMED)
    missing = set(MALFORMED_REASONS) - kernel - {"unsupported_linktype"}  # XDP sees Ethernet only
    assert kernel <= set(MALFORMED_REASONS), kernel - set(MALFORMED_REASONS)
    assert not missing, f"reasons the kernel never counts: {missing}"
