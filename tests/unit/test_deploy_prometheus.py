"""deploy/prometheus: promtool accepts the scrape configuration and the rules, the rules behave as their
tests say, and the lab's rendered configuration is the deploy one with the lab's addresses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from libs.common.errors import ConfigError
from libs.lab.prometheus import LAB_TARGETS, render_config, start_prometheus

pytestmark = pytest.mark.unit

DEPLOY = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
SERVICES = ("sniffer", "ml_detector", "rag_logger", "rag", "firewall")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_scrape_config_and_its_rules() -> None:
    out = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_accepts_the_alert_rules() -> None:
    out = promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    out = promtool("test", "rules", str(DEPLOY / "alerts.test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_scrape_config_covers_every_service_on_its_default_port_and_etcd() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    found = {sc["labels"]["service"]: sc["targets"][0] for sc in jobs["ml-defender"]["static_configs"]}
    assert found == {
        "sniffer": "127.0.0.1:9101",
        "ml_detector": "127.0.0.1:9102",
        "rag_logger": "127.0.0.1:9103",
        "rag": "127.0.0.1:9104",
        "firewall": "127.0.0.1:9105",
    }
    assert found == dict(LAB_TARGETS)
    assert jobs["etcd"]["static_configs"][0]["targets"] == ["127.0.0.1:2379"]


def test_every_alert_has_severity_and_a_runbook_section_that_exists() -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    ops = (REPO / "docs" / "OPERATIONS.md").read_text()
    anchors = {line.lstrip("#").strip().lower() for line in ops.splitlines() if line.startswith("#")}
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.append(rule["alert"])
            assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
            runbook = rule["annotations"]["runbook"]
            assert runbook == f"docs/OPERATIONS.md#{rule['alert'].lower()}", rule["alert"]
            assert rule["alert"].lower() in anchors, f"docs/OPERATIONS.md has no section {rule['alert']}"
    assert len(names) == len(set(names)), "duplicate alert names"


def test_rendered_lab_config_passes_promtool_and_uses_the_given_targets(tmp_path: Path) -> None:
    targets = {"sniffer": "127.0.0.1:19101", "ml-detector": "127.0.0.1:19102"}
    plan = start_prometheus(tmp_path, targets, etcd_target="127.0.0.1:12379", port=19190, binary="/bin/true")
    assert plan is not None
    assert plan.url == "http://127.0.0.1:19190"
    assert "--web.listen-address=127.0.0.1:19190" in plan.command
    assert f"--storage.tsdb.path={tmp_path.resolve() / 'prometheus'}" in plan.command
    assert plan.storage_dir.is_dir()
    doc = yaml.safe_load(plan.config_path.read_text())
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert [(s["labels"]["service"], s["targets"]) for s in jobs["ml-defender"]["static_configs"]] == [
        ("sniffer", ["127.0.0.1:19101"]),
        ("ml_detector", ["127.0.0.1:19102"]),
    ]
    assert jobs["etcd"]["static_configs"][0]["targets"] == ["127.0.0.1:12379"]
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["127.0.0.1:19190"]
    assert doc["rule_files"] == [str(DEPLOY / "alerts.yml")]
    out = promtool("check", "config", str(plan.config_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert plan.program().command == plan.command


def test_lab_without_etcd_drops_that_job() -> None:
    doc = render_config(LAB_TARGETS, rules=DEPLOY / "alerts.yml", etcd_target=None)
    assert "etcd" not in {j["job_name"] for j in doc["scrape_configs"]}
    assert doc["global"]["scrape_timeout"] == "4s"


@pytest.mark.parametrize("bad", ["http://127.0.0.1:9101", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:x", ":9101"])
def test_a_target_that_is_not_host_port_is_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        render_config({"sniffer": bad}, rules=DEPLOY / "alerts.yml")
    assert "targets[sniffer]" in err.value.message
    assert "host:port" in err.value.message


def test_no_prometheus_installed_means_no_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("libs.lab.prometheus.prometheus_binary", lambda: None)
    assert start_prometheus(tmp_path) is None
    assert not (tmp_path / "prometheus.yml").exists()
