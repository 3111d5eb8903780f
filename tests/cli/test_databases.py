"""The CLI on both registry backends (SQLite file and PostgreSQL)."""

from __future__ import annotations

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.cli.app import EXIT_NOT_FOUND, EXIT_REFUSED

from .helpers import Run, csr_for


def test_lifecycle_on_both_databases(fleet: Run, database_url: str, authority: Authority) -> None:
    env = {"FLEET_DATABASE_URL": database_url}
    assert fleet.json("group", "create", "sensors", env=env)["name"] == "sensors"
    [token] = fleet.json("token", "create", "--group", "sensors", env=env)
    issued = authority.enroll(credential=TokenCredential(token["token"]),
                              csr=csr_for("dev-1", pki.generate_private_key()), actor="device")
    assert fleet.json("token", "list", env=env)[0]["uses"] == 0
    assert fleet.json("device", "show", "dev-1", env=env)["status"] == "active"
    assert fleet.json("cert", "show", issued.record.serial, env=env)["device_id"] == "dev-1"
    fleet.ok("device", "suspend", "dev-1", env=env)
    fleet.ok("device", "resume", "dev-1", env=env)
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise", env=env)
    again = fleet("device", "revoke", "dev-1", "--reason", "keyCompromise", env=env)
    assert again.exit_code == EXIT_REFUSED
    assert fleet("device", "show", "ghost", env=env).exit_code == EXIT_NOT_FOUND
    assert [c["status"] for c in fleet.json("cert", "list", env=env)] == ["revoked"]
    actions = {e["action"] for e in fleet.json("audit", "--device", "dev-1", env=env)}
    assert {"enroll", "device.suspend", "device.resume", "device.revoke"} <= actions
    assert b"BEGIN X509 CRL" in fleet.ok("crl", env=env).stdout_bytes


def test_refused_registry_unavailable(fleet: Run) -> None:
    url = "postgresql+psycopg://fleet:nothing@127.0.0.1:1/fleet"
    result = fleet("device", "list", env={"FLEET_DATABASE_URL": url})
    assert result.exit_code == 5
    assert result.stderr.startswith("error: registry database unavailable")
    assert "nothing" not in result.stderr
