from __future__ import annotations

from collections.abc import Callable

from fleet.cli.app import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE

from .helpers import Enroll, Run


def test_device_list_json(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-2", "pumps")
    enroll("dev-1", "sensors")
    listed = fleet.json("device", "list")
    assert [d["id"] for d in listed] == ["dev-1", "dev-2"]
    for device in listed:
        assert {"id", "group", "status"} <= set(device)
    assert listed[0]["group"] == "sensors"
    assert listed[0]["status"] == "active"


def test_device_list_filters(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1", "sensors")
    enroll("dev-2", "pumps")
    fleet.ok("device", "suspend", "dev-2")
    assert [d["id"] for d in fleet.json("device", "list", "--group", "pumps")] == ["dev-2"]
    assert [d["id"] for d in fleet.json("device", "list", "--status", "suspended")] == ["dev-2"]
    assert fleet.json("device", "list", "--status", "revoked") == []
    assert "dev-1" in fleet.ok("device", "list").stdout


def test_device_list_refused_unknown_status(fleet: Run) -> None:
    result = fleet("device", "list", "--status", "sleeping")
    assert result.exit_code == EXIT_USAGE
    assert "'sleeping' is not one of" in result.stderr


def test_device_show_json(fleet: Run, enroll: Enroll) -> None:
    issued = enroll("dev-1")
    shown = fleet.json("device", "show", "dev-1")
    assert {"id", "group", "status", "certificates"} <= set(shown)
    assert shown["id"] == "dev-1"
    assert shown["group"] == "sensors"
    assert shown["status"] == "active"
    [cert] = shown["certificates"]
    assert {"serial", "status", "not_after"} <= set(cert)
    assert cert["serial"] == format(issued.certificate.serial_number, "x")
    assert cert["status"] == "active"
    assert cert["not_after"] == issued.certificate.not_valid_after_utc.strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    human = fleet.ok("device", "show", "dev-1").stdout
    assert cert["serial"] in human


def test_device_show_refused_unknown_device(fleet: Run) -> None:
    result = fleet("device", "show", "ghost")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown device 'ghost'\n"


def test_device_revoke(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    result = fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    assert "revoked device dev-1 (keyCompromise)" in result.stdout
    shown = fleet.json("device", "show", "dev-1")
    assert shown["status"] == "revoked"
    assert shown["status_reason"] == "keyCompromise"
    assert [c["status"] for c in shown["certificates"]] == ["revoked"]
    assert shown["certificates"][0]["revocation_reason"] == "keyCompromise"


def test_device_revoke_reason_is_case_insensitive(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    fleet.ok("device", "revoke", "dev-1", "--reason", "CESSATIONOFOPERATION")
    assert fleet.json("device", "show", "dev-1")["status_reason"] == "cessationOfOperation"


def test_device_revoke_refused_missing_reason_lists_reasons(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    result = fleet("device", "revoke", "dev-1")
    assert result.exit_code == EXIT_USAGE
    assert "'--reason'" in result.stderr
    assert "keyCompromise, cACompromise" in result.stderr
    assert fleet.json("device", "show", "dev-1")["status"] == "active"


def test_device_revoke_refused_invalid_reason_changes_nothing(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    result = fleet("device", "revoke", "dev-1", "--reason", "stolen")
    assert result.exit_code == EXIT_USAGE
    assert "'stolen' is not an RFC 5280 reason" in result.stderr
    assert "privilegeWithdrawn" in result.stderr
    shown = fleet.json("device", "show", "dev-1")
    assert shown["status"] == "active"
    assert shown["certificates"][0]["status"] == "active"


def test_device_revoke_refused_unknown_device(fleet: Run) -> None:
    result = fleet("device", "revoke", "ghost", "--reason", "keyCompromise")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "unknown device 'ghost'" in result.stderr


def test_device_revoke_refused_already_revoked(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    result = fleet("device", "revoke", "dev-1", "--reason", "superseded")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr == "error: device dev-1 is already revoked\n"
    assert fleet.json("device", "show", "dev-1")["status_reason"] == "keyCompromise"


def test_device_suspend_and_resume(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    assert "suspended device dev-1" in fleet.ok("device", "suspend", "dev-1",
                                                "--reason", "maintenance").stdout
    shown = fleet.json("device", "show", "dev-1")
    assert shown["status"] == "suspended"
    assert shown["status_reason"] == "maintenance"
    assert "resumed device dev-1" in fleet.ok("device", "resume", "dev-1").stdout
    assert fleet.json("device", "show", "dev-1")["status"] == "active"


def test_device_revoke_suspend_resume_json(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    enroll("dev-2")
    suspended = fleet.json("device", "suspend", "dev-1", "--reason", "maintenance")
    assert suspended == fleet.json("device", "show", "dev-1")
    assert (suspended["status"], suspended["status_reason"]) == ("suspended", "maintenance")
    resumed = fleet.json("device", "resume", "dev-1")
    assert (resumed["id"], resumed["status"]) == ("dev-1", "active")
    revoked = fleet.json("device", "revoke", "dev-2", "--reason", "keyCompromise")
    assert (revoked["status"], revoked["status_reason"]) == ("revoked", "keyCompromise")
    assert [(c["status"], c["revocation_reason"]) for c in revoked["certificates"]] == [
        ("revoked", "keyCompromise")]


def test_device_suspend_refused_not_active(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    fleet.ok("device", "suspend", "dev-1")
    result = fleet("device", "suspend", "dev-1")
    assert result.exit_code == EXIT_REFUSED
    assert "is suspended, not active" in result.stderr


def test_device_suspend_refused_unknown_device(fleet: Run) -> None:
    assert fleet("device", "suspend", "ghost").exit_code == EXIT_NOT_FOUND


def test_device_suspend_refused_reason_too_long(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    result = fleet("device", "suspend", "dev-1", "--reason", "x" * 65)
    assert result.exit_code == EXIT_USAGE
    assert fleet.json("device", "show", "dev-1")["status"] == "active"


def test_device_resume_refused_not_suspended(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    result = fleet("device", "resume", "dev-1")
    assert result.exit_code == EXIT_REFUSED
    assert "is active, not suspended" in result.stderr


def test_device_resume_refused_revoked(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    result = fleet("device", "resume", "dev-1")
    assert result.exit_code == EXIT_REFUSED
    assert "is revoked, not suspended" in result.stderr


def test_device_delete_revoked(fleet: Run, enroll: Enroll) -> None:
    serial = format(enroll("dev-1").certificate.serial_number, "x")
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    result = fleet.ok("device", "delete", "dev-1")
    assert result.stdout == ("deleted device dev-1 (revoked, group sensors); its certificates "
                             "and audit history stay\n")
    assert fleet("device", "show", "dev-1").exit_code == EXIT_NOT_FOUND
    assert [c["serial"] for c in fleet.json("cert", "list", "--device", "dev-1")] == [serial]
    assert [e["action"] for e in fleet.json("audit", "--device", "dev-1")][-1] == "device.delete"


def test_device_delete_never_enrolled_json(fleet: Run, declare: Callable[..., None]) -> None:
    declare("sensors")
    fleet.ok("token", "create", "--group", "sensors", "--device", "dev-1")
    deleted = fleet.json("device", "delete", "dev-1")
    assert (deleted["id"], deleted["status"], deleted["deleted"]) == ("dev-1", "pending", True)
    [token] = fleet.json("token", "list")
    assert token["revoked"] is True


def test_device_delete_refused_while_active(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    result = fleet("device", "delete", "dev-1")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr == ("error: device dev-1 is active: only a device that never enrolled "
                             "or is revoked can be deleted; revoke it first (fleet device "
                             "revoke dev-1 --reason REASON)\n")
    assert fleet.json("device", "show", "dev-1")["status"] == "active"


def test_device_delete_refused_unknown(fleet: Run) -> None:
    result = fleet("device", "delete", "ghost")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown device 'ghost'\n"
