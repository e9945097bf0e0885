"""accelerate / decelerate / optimize against a real etcd, applied live through libs.watcher's
ConfigRuntime (the path the ml-detector and sniffer use for `config/<service>`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.etcd import EtcdServer

from helpers import REPO, wait_for
from libs.etcd_client import EtcdClient
from libs.etcd_client.settings import EtcdSettings
from libs.watcher import ConfigRuntime
from services.ml_detector.config import HOT_FIELDS, DetectorSettings

MLD_RAG = [sys.executable, "-m", "services.rag"]


def rag(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MLD_RAG, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin if stdin is not None else "",
    )


@pytest.mark.integration
def test_accelerate_then_decelerate_applied_live_and_audited(etcd_server: EtcdServer, tmp_path: Path) -> None:
    client = EtcdClient(etcd_server.url)
    rt = ConfigRuntime(
        "ml-detector",
        DetectorSettings,
        hot_fields=HOT_FIELDS,
        node="node-t",
        etcd=EtcdSettings(endpoint=etcd_server.url, events_endpoint=None, cache_dir=tmp_path),
    )
    rt.start()
    try:
        start = rt.current.thresholds
        r = rag("accelerate", "--yes", "--etcd", etcd_server.url, "--reason", "test")
        assert r.returncode == 0, r.stderr
        assert "thresholds.drop: 0.7 -> 0.65" in r.stdout
        wait_for(lambda: rt.current.thresholds.drop == 0.65, timeout=5, what="accelerate applied live")
        assert rt.current.thresholds.divergence == 0.25 and rt.current.thresholds.alert == 0.45
        r = rag("decelerate", "--yes", "--json", "--etcd", etcd_server.url)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["written"][0]["service"] == "ml-detector"
        wait_for(lambda: rt.current.thresholds == start, timeout=5, what="decelerate restored the thresholds")
        audits = [client.decode(kv) for kv in client.get_prefix("audit/")]
        assert [a["command"] for a in audits] == ["rag accelerate", "rag decelerate"]
        assert audits[0]["reason"] == "test" and audits[0]["changes"]
    finally:
        rt.stop()


@pytest.mark.integration
def test_refusals_leave_etcd_unchanged(etcd_server: EtcdServer) -> None:
    client = EtcdClient(etcd_server.url)
    doc = DetectorSettings().model_dump(mode="json", exclude={"node_id"})
    doc["thresholds"]["divergence"] = 0.12
    client.set("config/ml-detector", doc)
    rev = client.get_kv("config/ml-detector").mod_revision  # type: ignore[union-attr]
    r = rag("accelerate", "--yes", "--etcd", etcd_server.url)
    assert r.returncode == 1 and "safe bounds" in r.stderr and "divergence 0.12 -> 0.07" in r.stderr
    r = rag("decelerate", "--etcd", etcd_server.url, stdin="n\n")  # asked, answered no
    assert r.returncode == 2 and "not applied" in r.stderr
    assert client.get_kv("config/ml-detector").mod_revision == rev  # type: ignore[union-attr]
    assert client.get_prefix("audit/") == []


@pytest.mark.integration
def test_optimize_writes_both_services(etcd_server: EtcdServer) -> None:
    client = EtcdClient(etcd_server.url)
    # Limits far below any real usage: the lightest profile is chosen.
    r = rag(
        "optimize",
        "--cpu",
        "0.001",
        "--ram",
        "1",
        "--temp",
        "1",
        "--yes",
        "--json",
        "--etcd",
        etcd_server.url,
    )
    assert r.returncode == 0, r.stderr
    assert "profile minimal" in r.stderr
    assert client.get("config/ml-detector")["explain"]["top_k"] == 0
    assert client.get("config/sniffer")["flows"]["export_interval_ms"] == 1000
    assert len(client.get_prefix("audit/")) == 2
