"""Every metric the dashboard and the alert rules refer to exists.

The catalogue is what the services really register: each services/<pkg>/metrics.py is imported and
the prometheus-client registry read, plus the shared metrics (ZeroMQ transport, build info, live
configuration) of each service whose code creates them. A panel or alert naming anything else fails.
etcd's and Prometheus's own names are an explicit list, checked against a real etcd by
tests/integration/test_prometheus_scrape.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import yaml

from helpers import REPO, service_metric_families
from libs.lab.prometheus import (
    ETCD_METRICS,
    METRIC_PACKAGES,
    sample_names,
)

pytestmark = pytest.mark.unit

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ml-defender.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
# Not from our code: series Prometheus makes per target, and etcd's own metrics (3.4).
PROMETHEUS_SYNTHETIC = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "ALERTS",
    "ALERTS_FOR_STATE",
}
EXTERNAL = PROMETHEUS_SYNTHETIC | ETCD_METRICS

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "atan2",
}  # fmt: skip
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


@cache
def catalogue() -> frozenset[str]:
    """Every series name our services can expose, read from the registry after registering them."""
    # A fresh process: an import error or a duplicate metric fails the test, and metrics other
    # tests registered in this process do not count.
    # A labelled family with no child yet has no samples: its series names come from its type.
    names: set[str] = set()
    for fam in service_metric_families():
        names |= sample_names(str(fam["name"]), str(fam["type"]))
        names |= {str(n) for n in fam["samples"]}  # type: ignore[attr-defined]
    return frozenset(names)


def metric_refs(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, `__name__` regexes) that a PromQL expression selects."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    regexes: set[str] = set()
    names: set[str] = set()
    for body in re.findall(r"\{([^{}]*)\}", expr):
        for op, value in re.findall(r'__name__\s*(=~|=)\s*"([^"]*)"', body):
            (regexes if op == "=~" else names).add(value)
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names, regexes


def unknown_refs(expr: str, known: frozenset[str] | set[str]) -> list[str]:
    names, regexes = metric_refs(expr)
    bad = sorted(n for n in names if n not in known)
    for rx in sorted(regexes):
        if not any(re.fullmatch(rx, k) for k in known):
            bad.append(f"__name__=~{rx!r} (matches nothing)")
    return bad


def dashboard_exprs(doc: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows included."""
    if isinstance(doc, dict):
        title = doc.get("title", where) if "type" in doc else where
        if isinstance(doc.get("expr"), str):
            yield where, doc["expr"]
        for key, value in doc.items():
            if key != "templating":
                yield from dashboard_exprs(value, title)
    elif isinstance(doc, list):
        for item in doc:
            yield from dashboard_exprs(item, where)


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


# --- the extractor itself, so that a bug in it cannot make the strict checks pass vacuously


@pytest.mark.parametrize(
    ("expr", "names", "regexes"),
    [
        ('sum by (le) (rate(foo_bucket{a="b", c=~"x|y"}[5m]))', {"foo_bucket"}, set()),
        ("histogram_quantile(0.95, sum by (le, job) (rate(x_seconds_bucket[$__rate_interval])))", {"x_seconds_bucket"}, set()),
        ('a_total / on(instance) group_left(service) b_info > 1e9 and c offset 5m', {"a_total", "b_info", "c"}, set()),
        ('{__name__=~"mld_.+_zmq_dropped_messages_total", endpoint!=""} == 0', set(), {"mld_.+_zmq_dropped_messages_total"}),
        ('label_replace(up{job="ml-defender"}, "svc", "$1", "service", "(.*)")', {"up"}, set()),
        ('count_values("version", m_build_info) or vector(0)', {"m_build_info"}, set()),
    ],
)  # fmt: skip
def test_extractor_finds_exactly_the_metric_names(expr: str, names: set[str], regexes: set[str]) -> None:
    assert metric_refs(expr) == (names, regexes)


def test_catalogue_flags_a_misspelt_metric() -> None:
    known = catalogue() | EXTERNAL
    assert unknown_refs("rate(mld_firewall_batches_total[5m])", known) == []
    assert unknown_refs("rate(mld_firewall_batch_total[5m])", known) == ["mld_firewall_batch_total"]
    assert unknown_refs('{__name__=~"mld_.+_no_such_thing"}', known) == [
        "__name__=~'mld_.+_no_such_thing' (matches nothing)"
    ]


def test_catalogue_holds_the_services_metrics_and_the_shared_ones() -> None:
    known = catalogue()
    assert "mld_firewall_block_latency_seconds_bucket" in known
    assert "process_start_time_seconds" in known  # prometheus-client's process collector
    for name in known:
        if name.startswith("mld_"):
            service = next(
                (p for p in sorted(METRIC_PACKAGES, key=len, reverse=True) if name.startswith(f"mld_{p}_")),
                None,
            )
            assert service, f"{name} does not start with mld_<service>_"


# --- the checks


def test_dashboard_is_valid_json_with_panels() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(doc))
    assert len(exprs) >= 20, "the dashboard lost its panels"
    assert doc["uid"] == "ml-defender"


def test_every_dashboard_query_refers_to_a_metric_that_exists() -> None:
    known = catalogue() | EXTERNAL
    problems = []
    for title, expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
        bad = unknown_refs(expr, known)
        if bad:
            problems.append(f"panel {title!r}: {', '.join(bad)} in {expr}")
    assert not problems, "\n".join(problems)


def test_every_alert_refers_to_a_metric_that_exists() -> None:
    known = catalogue() | EXTERNAL
    problems = []
    for name, expr in alert_exprs():
        bad = unknown_refs(expr, known)
        if bad:
            problems.append(f"alert {name}: {', '.join(bad)}")
    assert not problems, "\n".join(problems)


def test_the_dashboard_has_a_row_per_service() -> None:
    doc = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    for svc in ("Overview", "Sniffer", "ML detector", "Firewall", "rag-logger", "RAG", "Configuration"):
        assert any(r.startswith(svc) for r in rows), f"no row {svc}: {rows}"


def test_committed_dashboard_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location(
        "build_dashboard", REPO / "deploy" / "grafana" / "build_dashboard.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert json.loads(DASHBOARD.read_text()) == module.dashboard(), (
        "run: .venv/bin/python deploy/grafana/build_dashboard.py"
    )
