"""accelerate / decelerate / optimize against a real etcd; each step applied live by a running
`mld-detector run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures.detector import decide, detector_config, peers
from fixtures.etcd import EtcdServer, ServiceProcess, read_status

from helpers import REPO, wait_for
from libs.etcd_client import EtcdClient
from services.ml_detector.config import DetectorSettings

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


def thresholds(d: dict[str, Any], seq: int) -> tuple[float, float, float, int]:
    """The thresholds (drop, alert, divergence) and config revision the running detector decided
    its next flow with."""
    ev = decide(d, seq)
    t = ev.thresholds
    return round(t.drop, 6), round(t.alert, 6), round(t.divergence, 6), ev.config_revision


@pytest.mark.integration
def test_accelerate_then_decelerate_applied_live_and_audited(etcd_server: EtcdServer, tmp_path: Path) -> None:
    """Each step is applied by a running `mld-detector run` (the next flow is decided with it),
    and decelerate returns the thresholds to where they were."""
    client = EtcdClient(etcd_server.url)
    cfg = detector_config("node-t")
    with peers(cfg) as d, ServiceProcess("ml-detector", cfg, tmp_path, etcd_server) as det:
        d["proc"] = det
        wait_for(lambda: det.alive() and read_status(etcd_server, "node-t", "ml-detector"), 60,
                 what="detector up and reporting to etcd")  # fmt: skip
        start = thresholds(d, 1)
        assert start[:3] == (0.7, 0.5, 0.3), start
        r = rag("accelerate", "--yes", "--etcd", etcd_server.url, "--reason", "test")
        assert r.returncode == 0, r.stderr
        assert "thresholds.drop: 0.7 -> 0.65" in r.stdout
        rev = client.get_kv("config/ml-detector").mod_revision  # type: ignore[union-attr]
        wait_for(lambda: read_status(etcd_server, "node-t", "ml-detector").get("revision") == rev, 10,
                 what="accelerate applied by the running detector")  # fmt: skip
        assert thresholds(d, 2) == (0.65, 0.45, 0.25, rev)
        r = rag("decelerate", "--yes", "--json", "--etcd", etcd_server.url)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["written"][0]["service"] == "ml-detector"
        rev = client.get_kv("config/ml-detector").mod_revision  # type: ignore[union-attr]
        wait_for(lambda: read_status(etcd_server, "node-t", "ml-detector").get("revision") == rev, 10,
                 what="decelerate applied by the running detector")  # fmt: skip
        assert thresholds(d, 3) == (*start[:3], rev)
        det.alive()
    audits = [client.decode(kv) for kv in client.get_prefix("audit/")]
    assert [a["command"] for a in audits] == ["rag accelerate", "rag decelerate"]
    assert audits[0]["reason"] == "test" and audits[0]["changes"]


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
