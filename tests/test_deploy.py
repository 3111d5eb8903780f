"""The systemd units in deploy/ are valid for systemd, run real `fleet` commands and keep the
limits and hardening docs/deployment.md promises."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
UNITS = sorted((PROJECT / "deploy" / "systemd").glob("*.service"))
INSTALLED = "/opt/fleet/bin/fleet"
FLEET = Path(sys.executable).with_name("fleet")


def service_section(unit: Path) -> dict[str, list[str]]:
    """Every key of [Service] with all its values (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_deploy_ships_a_unit_per_service() -> None:
    assert [u.name for u in UNITS] == ["fleet-broker.service", "fleet-est.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_deploy_unit_passes_systemd_analyze_verify_without_warnings(
        unit: Path, tmp_path: Path, tool: Callable[[str], str]) -> None:
    analyze = tool("systemd-analyze")
    # The unit names the installed path; verify it against this installation's fleet.
    local = tmp_path / unit.name
    local.write_text(unit.read_text().replace(INSTALLED, str(FLEET)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_deploy_unit_verify_catches_a_bad_key(tmp_path: Path,
                                              tool: Callable[[str], str]) -> None:
    """The check above can fail: a misspelt hardening key is reported."""
    analyze = tool("systemd-analyze")
    local = tmp_path / "fleet-est.service"
    text = UNITS[1].read_text().replace(INSTALLED, str(FLEET))
    local.write_text(text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                            timeout=60)
    assert "Unknown key" in result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_deploy_unit_runs_a_real_fleet_command(unit: Path) -> None:
    (command,) = service_section(unit)["ExecStart"]
    argv = shlex.split(command)
    assert argv[0] == INSTALLED
    assert argv[1:3] == ["serve", unit.name.removeprefix("fleet-").removesuffix(".service")]
    result = subprocess.run([str(FLEET), *argv[1:], "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_deploy_unit_limits_and_hardening(unit: Path) -> None:
    service = service_section(unit)
    assert int(service["LimitNOFILE"][0]) >= 65536
    assert service["UMask"] == ["0077"]
    assert service["User"] == ["fleet"]
    assert service["StateDirectoryMode"] == ["0700"]
    assert service["CapabilityBoundingSet"] == [""]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "RestrictNamespaces", "RestrictSUIDSGID", "LockPersonality"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert "@system-service" in service["SystemCallFilter"]
    assert service["Environment"] == ["FLEET_CONFIG=/etc/fleet/fleet.toml",
                                      "FLEET_DATA_DIR=/var/lib/fleet"]


def test_deploy_units_parse_as_ini() -> None:
    """No stray lines outside a section (systemd would ignore them silently)."""
    for unit in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        assert set(parser.sections()) == {"Unit", "Service", "Install"}
