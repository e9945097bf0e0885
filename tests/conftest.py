"""Shared fixtures. Area-specific fixtures live in tests/fixtures/<area>.py and are listed here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import SHARED_PCAPS, is_root

pytest_plugins: list[str] = ["fixtures.etcd"]


@pytest.fixture(scope="session")
def shared_pcaps() -> Path:
    """The public captures of ../shared/data/pcaps; skipped (with the reason) when absent."""
    if not (SHARED_PCAPS / "TRUTH.json").exists():
        pytest.skip(f"shared captures not found at {SHARED_PCAPS} (set MLD_SHARED_PCAPS)")
    return SHARED_PCAPS


@pytest.fixture
def require_root() -> None:
    if not is_root():
        pytest.skip("privileged test: needs root (network namespaces, nftables, XDP)")
