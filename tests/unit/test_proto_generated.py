"""The committed protobuf code must be what `make proto` produces from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
PROTO = Path(__file__).resolve().parents[2] / "proto"


def test_generated_code_matches_proto_files(tmp_path: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "ml_defender" / "v1").glob("*.proto"))
    assert sources, "no .proto files found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *sources,
        ],
        cwd=PROTO,
        check=True,
    )
    generated = sorted((tmp_path / "ml_defender" / "v1").glob("*_pb2.py*"))
    assert len(generated) == 2 * len(sources)
    stale = [
        g.name for g in generated if (PROTO / "ml_defender" / "v1" / g.name).read_text() != g.read_text()
    ]
    assert not stale, f"generated code out of date: {stale}; run `make proto` and commit the result"
    committed = {p.name for p in (PROTO / "ml_defender" / "v1").glob("*_pb2.py*")}
    assert committed == {g.name for g in generated}, "generated files without a .proto (or the reverse)"
