"""One naming scheme across services: `mld_<service>_<thing>_<unit>`, `_total` counters, latencies as
histograms in seconds, and each service's README listing its own metrics (DESIGN.md section 9)."""

from __future__ import annotations

import re
from functools import cache

import pytest

from helpers import REPO, service_metric_families
from libs.lab.prometheus import METRIC_PACKAGES

pytestmark = pytest.mark.unit

# Metrics every service gets from libs/ (documented once, in libs/common and libs/watcher).
SHARED = re.compile(r"_(zmq_\w+|build|config_\w+|etcd_connected)$")
HISTOGRAM_UNITS = ("_seconds", "_bytes", "_events", "_ops", "_flows", "_packets", "_ratio")
LATENCY_WORDS = ("latency", "duration", "time", "lag", "seconds")


@cache
def families() -> dict[str, tuple[str, str, str]]:
    """family name -> (service package, type, help) for every mld_ metric the services register."""
    by_len = sorted(METRIC_PACKAGES, key=len, reverse=True)
    out = {}
    for fam in service_metric_families():
        name = str(fam["name"])
        if name.startswith("mld_"):
            pkg = next((p for p in by_len if name.startswith(f"mld_{p}_")), "")
            out[name] = (pkg, str(fam["type"]), str(fam["doc"]))
    return out


def test_every_metric_is_named_after_its_service() -> None:
    bad = [name for name, (pkg, _, _) in families().items() if not pkg]
    assert not bad, f"not mld_<service>_...: {bad}"
    for name in families():
        assert re.fullmatch(r"mld_[a-z0-9_]+", name), name
        assert not name.endswith("_total"), f"{name}: prometheus-client adds _total to counters itself"


def test_every_service_registers_metrics() -> None:
    have = {pkg for pkg, _, _ in families().values()}
    assert have == set(METRIC_PACKAGES)


def test_histograms_carry_their_unit_and_latencies_are_in_seconds() -> None:
    for name, (_, kind, doc) in families().items():
        if kind != "histogram":
            continue
        assert name.endswith(HISTOGRAM_UNITS), f"{name}: histogram without a unit suffix"
        if any(w in name for w in LATENCY_WORDS) or "time" in doc.lower().split():
            assert name.endswith("_seconds"), f"{name}: a latency histogram is in seconds"


def test_latencies_are_histograms_not_gauges() -> None:
    for name, (_, kind, _) in families().items():
        if name.endswith("_seconds"):
            assert kind == "histogram", f"{name} is a {kind}; quantiles need a histogram"


@pytest.mark.parametrize("pkg", METRIC_PACKAGES)
def test_service_readme_lists_its_metrics(pkg: str) -> None:
    readme = REPO / "services" / pkg / "README.md"
    if not readme.exists():
        pytest.skip(f"services/{pkg}/README.md not written yet")
    text = readme.read_text()
    own = [n for n, (p, _, _) in families().items() if p == pkg and not SHARED.search(n)]
    # Listed as code, in full or (under a `mld_<service>_*` heading) by the rest of the name.
    words = {w.lstrip("_") for w in re.findall(r"[a-z0-9_]+", " ".join(re.findall(r"`([^`]*)`", text)))}
    short = {n: n.removeprefix(f"mld_{pkg}_") for n in own}
    missing = [n for n in own if not ({n, short[n], n + "_total", short[n] + "_total"} & words)]
    assert not missing, f"services/{pkg}/README.md does not list {missing}"
