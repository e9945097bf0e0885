"""Test helpers shared by every tier: polling with a deadline, free ports, shared captures."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
SHARED_PCAPS = Path(os.environ.get("MLD_SHARED_PCAPS", REPO.parent / "shared" / "data" / "pcaps"))


def wait_for(
    cond: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll `cond` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except AssertionError as exc:  # a condition may assert to say why it is not met yet
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.1f}s waiting for {what}" + (f": {last_exc}" if last_exc else "")
            )
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_pcap(name: str) -> Path:
    """Path of a capture in ../shared/data/pcaps (read in place, never copied)."""
    return SHARED_PCAPS / name


def is_root() -> bool:
    return os.geteuid() == 0


_CATALOGUE_SCRIPT = """
import json
from prometheus_client import REGISTRY
from libs.lab.prometheus import METRIC_PACKAGES, register_service_metrics
for pkg in METRIC_PACKAGES:
    register_service_metrics(pkg)
print(json.dumps([
    {"name": f.name, "type": f.type, "doc": f.documentation,
     "samples": sorted({s.name for s in f.samples})}
    for f in REGISTRY.collect()
]))
"""


def service_metric_families() -> list[dict[str, object]]:
    """Every metric family the services register, from a fresh process.

    The test process's own registry also holds what other tests created (metrics of throw-away
    service names), so the catalogue is read where only the services have registered.
    """
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _CATALOGUE_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise AssertionError(f"registering the services' metrics failed:\n{out.stderr}")
    return list(json.loads(out.stdout.strip().splitlines()[-1]))
