"""The CLI refuses identities whose MQTT client ids would overlap another kind's."""

from __future__ import annotations

from pathlib import Path

from fleet.cli.app import EXIT_NOT_FOUND, EXIT_REFUSED

from .helpers import Enroll, Run


def test_issue_service_refused_when_a_device_id_is_one_of_its_client_ids(
        fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    enroll("gwX-sensor-1")
    out = tmp_path / "out"
    result = fleet("cert", "issue-service", "gwX", "--out-dir", str(out))
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: service/gwX collides with device/gwX-sensor-1")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "gwX.key").exists()
    assert not (out / "gwX.pem").exists()
    assert fleet("cert", "list", "--service", "gwX").exit_code == EXIT_NOT_FOUND
    fleet.ok("cert", "issue-service", "gwX2", "--out-dir", str(out))


def test_token_for_a_device_refused_when_a_service_claims_its_id(
        fleet: Run, tmp_path: Path) -> None:
    fleet.ok("cert", "issue-service", "gwX", "--out-dir", str(tmp_path))
    fleet.ok("group", "create", "g")
    result = fleet("token", "create", "--group", "g", "--device", "gwX-1")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: device/gwX-1 collides with service/gwX")
    assert len(result.stderr.strip().splitlines()) == 1
    assert fleet.json("token", "list") == []
    assert fleet.json("device", "list") == []
