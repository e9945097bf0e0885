"""The XDP and AF_PACKET sources fail with one clear error (what, where, how to fix), not a trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sniffer import libbpf
from services.sniffer.config import SnifferSettings
from services.sniffer.errors import SourceError
from services.sniffer.sources import source_class

pytestmark = pytest.mark.unit


def settings(source: str, interface: str) -> SnifferSettings:
    return SnifferSettings.model_validate({"capture": {"source": source, "interface": interface}})


@pytest.mark.parametrize("source", ["xdp", "afpacket"])
def test_missing_interface_is_a_clear_error(source: str) -> None:
    with pytest.raises(SourceError) as err:
        source_class(source)(settings(source, "mld-no-such-if0"))  # type: ignore[call-arg]
    assert "mld-no-such-if0" in err.value.message
    assert "capture.interface" in err.value.message and "fix:" in err.value.message


def test_missing_object_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.o"
    with pytest.raises(SourceError) as err:
        libbpf.BpfObject(missing)
    assert str(missing) in err.value.message and "make bpf" in err.value.message


def test_garbage_object_file_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF object")
    with pytest.raises(SourceError) as err:
        libbpf.BpfObject(junk)
    assert str(junk) in err.value.message
