"""`mld-config` against a real etcd: validate before writing, CAS, history, diff, init, encryption."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.etcd import EtcdServer

from libs.etcd_client import EtcdClient
from libs.etcd_client.cli import main

pytestmark = pytest.mark.integration


def run(server: EtcdServer, *args: str, input: str | None = None, env: dict[str, str] | None = None):
    return CliRunner().invoke(
        main, ["--etcd", server.url, *args], input=input, env=env, catch_exceptions=False
    )


def defaults_dir(tmp_path: Path) -> str:
    """Fresh default documents from the models (deploy/config itself is checked by a unit test)."""
    out = tmp_path / "defaults"
    assert CliRunner().invoke(main, ["defaults", "--write-dir", str(out)]).exit_code == 0
    return str(out)


def test_init_get_set_diff_history(etcd_server: EtcdServer, tmp_path: Path) -> None:
    r = run(etcd_server, "init", "--dir", defaults_dir(tmp_path))
    assert r.exit_code == 0 and "ml-detector: loaded" in r.output
    assert "present, kept" in run(etcd_server, "init", "--dir", defaults_dir(tmp_path)).output
    doc = json.loads(run(etcd_server, "get", "ml-detector").output)
    assert doc["thresholds"]["drop"] == 0.7

    doc["thresholds"]["drop"] = 0.65
    new = tmp_path / "det.json"
    new.write_text(json.dumps(doc))
    r = run(etcd_server, "diff", "ml-detector", str(new))
    assert r.exit_code == 1 and "thresholds.drop: 0.7 -> 0.65  [hot]" in r.output
    r = run(etcd_server, "set", "ml-detector", str(new), "--reason", "test")
    assert r.exit_code == 0 and "stored /ml-defender/v1/config/ml-detector" in r.output
    assert run(etcd_server, "diff", "ml-detector", str(new)).exit_code == 0
    hist = run(etcd_server, "history", "ml-detector").output
    assert "thresholds.drop: 0.7 -> 0.65" in hist
    audits = EtcdClient(etcd_server.url).get_prefix("audit/")
    assert audits and json.loads(audits[-1].raw)["reason"] == "test"

    doc["thresholds"]["drop"] = 3
    doc["colour"] = "red"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = run(etcd_server, "set", "ml-detector", str(bad))
    assert r.exit_code == 2
    assert "thresholds.drop" in r.output and "colour: Extra inputs are not permitted" in r.output
    assert json.loads(run(etcd_server, "get", "ml-detector").output)["thresholds"]["drop"] == 0.65
    r = run(etcd_server, "set", "ml-detector", "-", input="{not json")
    assert r.exit_code == 2 and "not valid JSON" in r.output


def test_edit_is_cas_on_what_was_opened(etcd_server: EtcdServer, tmp_path: Path) -> None:
    run(etcd_server, "init", "--dir", defaults_dir(tmp_path))
    # an "editor" that changes the threshold, while another writer edits etcd at the same time
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, os, sys, urllib.request, base64\n"
        "p = sys.argv[1]; d = json.load(open(p)); d['thresholds']['drop'] = 0.61; json.dump(d, open(p, 'w'))\n"
        "if os.environ.get('RACE'):\n"
        "    k = base64.b64encode(b'/ml-defender/v1/config/ml-detector').decode()\n"
        "    v = base64.b64encode(json.dumps({'thresholds': {'drop': 0.9}}).encode()).decode()\n"
        "    urllib.request.urlopen(os.environ['ETCD'] + '/v3/kv/put', json.dumps({'key': k, 'value': v}).encode())\n"
    )
    env = {"EDITOR": f"{sys.executable} {editor}", "ETCD": etcd_server.url}
    r = run(etcd_server, "edit", "ml-detector", env=env)
    assert r.exit_code == 0 and "thresholds.drop: 0.7 -> 0.61" in r.output
    r = run(etcd_server, "edit", "ml-detector", env={**env, "RACE": "1"})
    assert r.exit_code == 2 and "changed while you were editing" in r.output
    assert json.loads(run(etcd_server, "get", "ml-detector").output) == {"thresholds": {"drop": 0.9}}


def test_keygen_and_encrypted_set(etcd_server: EtcdServer, tmp_path: Path) -> None:
    key = tmp_path / "cfg.key"
    assert CliRunner().invoke(main, ["keygen", str(key)]).exit_code == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    doc = tmp_path / "fw.json"
    doc.write_text("{}")
    r = run(etcd_server, "--key-file", str(key), "set", "firewall", str(doc), "--encrypt", "--compress")
    assert r.exit_code == 0, r.output
    meta = json.loads(run(etcd_server, "get", "firewall", "--meta").output)
    assert meta["encryption"] == "chacha20-poly1305" and meta["compression"] == "zstd"
    assert run(etcd_server, "--key-file", str(key), "get", "firewall").exit_code == 0
    r = run(etcd_server, "get", "firewall")
    assert r.exit_code == 1 and "no key file is configured" in r.output
    os.chmod(key, 0o644)
    r = run(etcd_server, "--key-file", str(key), "get", "firewall")
    assert r.exit_code == 2 and "chmod 600" in r.output
