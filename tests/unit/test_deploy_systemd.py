"""deploy/systemd: the units verify, each service gets exactly the capabilities it needs, and the
sandbox and restart policy are the same everywhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.unit

UNITS = REPO / "deploy" / "systemd"
INSTALL_BIN = "/opt/ml-defender/venv/bin"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# unit suffix -> (console script, capabilities it must have and no more)
SERVICES = {
    "sniffer": ("mld-sniffer", {"CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_PERFMON"}),
    "detector": ("mld-detector", set()),
    "firewall": ("mld-firewall", {"CAP_NET_ADMIN"}),
    "rag-logger": ("mld-rag-logger", set()),
    "rag": ("mld-rag", set()),
}
# systemd-analyze security's overall exposure, 0 (locked down) to 10 (unsafe); "OK" is below 4.
MAX_EXPOSURE = 2.5


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value in file order (systemd keys repeat, unlike ini files)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def unit_files() -> list[Path]:
    return sorted([*UNITS.glob("*.service"), *UNITS.glob("*.target")])


def installed_copy(tmp_path: Path) -> list[Path]:
    """The units with the install prefix pointed at this checkout's venv, so ExecStart= resolves."""
    venv_bin = Path(sys.prefix) / "bin"
    out = []
    for f in unit_files():
        dest = tmp_path / f.name
        dest.write_text(f.read_text().replace(INSTALL_BIN, str(venv_bin)))
        out.append(dest)
    return out


def require_systemd_analyze() -> str:
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze not installed (package systemd); the units are not verified here")
    return SYSTEMD_ANALYZE


def test_systemd_analyze_verify_passes_without_a_warning(tmp_path: Path) -> None:
    exe = require_systemd_analyze()
    files = installed_copy(tmp_path)
    out = subprocess.run(
        [exe, "verify", *map(str, files)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown keys and bad values are only warnings to systemd; here they fail the test.
    ours = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if str(tmp_path) in line or "ml-defender" in line
    ]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


@pytest.mark.parametrize(
    "name", [*(f"ml-defender-{s}.service" for s in SERVICES), "ml-defender-etcd.service"]
)
def test_security_exposure_stays_low(tmp_path: Path, name: str) -> None:
    exe = require_systemd_analyze()
    installed_copy(tmp_path)
    out = subprocess.run(
        [exe, "security", "--offline=true", "--no-pager", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, f"{name}: exposure {m.group(1)}\n{out.stdout}"


@pytest.mark.parametrize("svc", sorted(SERVICES))
def test_each_service_has_only_the_capabilities_it_needs(svc: str) -> None:
    unit = parse_unit(UNITS / f"ml-defender-{svc}.service")
    caps = SERVICES[svc][1]
    bounding = set(one(unit, "Service", "CapabilityBoundingSet").split())
    ambient = set(one(unit, "Service", "AmbientCapabilities").split())
    assert bounding == caps
    assert ambient == caps
    assert one(unit, "Service", "User") == "ml-defender"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    families = set(one(unit, "Service", "RestrictAddressFamilies").split())
    assert ("AF_PACKET" in families) == (svc == "sniffer")
    assert ("AF_NETLINK" in families) == (svc in ("sniffer", "firewall"))


@pytest.mark.parametrize("svc", sorted(SERVICES))
def test_each_service_runs_its_console_script_after_checking_its_config(svc: str) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    script = SERVICES[svc][0]
    assert script in scripts, f"pyproject.toml declares no console script {script}"
    unit = parse_unit(UNITS / f"ml-defender-{svc}.service")
    assert one(unit, "Service", "ExecStartPre") == f"{INSTALL_BIN}/{script} check-config"
    assert one(unit, "Service", "ExecStart") == f"{INSTALL_BIN}/{script} run"


@pytest.mark.parametrize("path", [p for p in sorted(UNITS.glob("*.service"))], ids=lambda p: p.name)
def test_restart_policy_and_sandbox_are_uniform(path: Path) -> None:
    unit = parse_unit(path)
    svc = unit["Service"]
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Unit", "PartOf") == "ml-defender.target"
    assert one(unit, "Install", "WantedBy") == "ml-defender.target"
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictNamespaces": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert svc.get(key) == [value], f"{path.name}: {key}"
    # W+X memory only where code is generated at run time (lleaves JIT) or ctypes closures serve libbpf.
    jit = path.name in ("ml-defender-sniffer.service", "ml-defender-detector.service")
    assert svc.get("MemoryDenyWriteExecute") == (None if jit else ["yes"]), path.name
    if path.name != "ml-defender-etcd.service":
        # exit 2 = bad configuration or usage: restarting cannot help
        assert one(unit, "Service", "RestartPreventExitStatus") == "2"
        assert one(unit, "Service", "KillMode") == "mixed"


def test_the_target_wants_every_unit() -> None:
    target = parse_unit(UNITS / "ml-defender.target")
    wanted = {w for line in target["Unit"]["Wants"] for w in line.split()}
    assert wanted == {p.name for p in UNITS.glob("*.service")}


def test_sysusers_file_is_valid() -> None:
    exe = shutil.which("systemd-sysusers")
    if exe is None:
        pytest.skip("systemd-sysusers not installed (package systemd)")
    out = subprocess.run(
        [exe, "--dry-run", str(UNITS / "ml-defender.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Failed" not in out.stderr, out.stderr


def test_exec_start_pre_passes_on_defaults_and_fails_with_exit_2_on_a_bad_file(tmp_path: Path) -> None:
    """What ExecStartPre runs: defaults pass; a bad file exits 2, which RestartPreventExitStatus stops on.

    All ten checks run at once: each is a Python start-up that imports a whole service.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLD_")}
    bad = tmp_path / "bad.json"
    bad.write_text('{"no_such_setting": 1}')
    runs: dict[tuple[str, str], subprocess.Popen[str]] = {}
    for svc, (script, _) in SERVICES.items():
        exe = str(Path(sys.prefix) / "bin" / script)
        env_var = "MLD_" + {"detector": "ML_DETECTOR"}.get(svc, svc.upper().replace("-", "_")) + "_CONFIG"
        # from the checkout, where relative defaults (models/) resolve as under WorkingDirectory=
        for case, extra in (("defaults", {}), ("bad file", {env_var: str(bad)})):
            runs[svc, case] = subprocess.Popen(
                [exe, "check-config"],
                cwd=REPO,
                env={**env, **extra},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
    results = {key: (proc.communicate(timeout=120), proc.returncode) for key, proc in runs.items()}
    for (svc, case), ((out, err), code) in results.items():
        if case == "defaults":
            assert code == 0, f"{svc}: {err}"
        else:
            assert code == 2, f"{svc}: exit {code}: {out}{err}"
            assert "no_such_setting" in err, f"{svc}: {err}"
