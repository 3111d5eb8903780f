"""fleet device delete: a device that never enrolled or is revoked leaves the registry; its
certificates (and so the CRL) and its audit history stay."""

from __future__ import annotations

import json

import pytest
from pki.x509_factory import new_key

from fleet.errors import ConflictError, KeyPolicyError, NotFoundError
from fleet.registry import CertificateStatus

from .conftest import Fleet


def test_delete_a_pending_device_revokes_its_bound_token(fleet: Fleet) -> None:
    token = fleet.token(device_id="dev-1")
    fleet.authority.delete_device(device_id="dev-1", actor="operator:ana")
    assert fleet.device("dev-1") is None
    [row] = fleet.tokens()
    assert row.revoked_at == fleet.clock.now
    event = fleet.audit()[-1]
    assert (event.action, event.outcome, event.actor, event.device_id) == (
        "device.delete", "ok", "operator:ana", "dev-1")
    assert json.loads(event.detail or "{}") == {
        "group": "sensors", "status": "pending", "tokens": [row.id], "certificates_kept": 0,
        "serials": []}
    with pytest.raises(Exception, match="revoked"):
        fleet.enroll("dev-1", token)  # the bound token cannot resurrect it


def test_delete_a_revoked_device_keeps_its_certificates_on_the_crl(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="operator")
    fleet.authority.delete_device(device_id="dev-1", actor="operator")
    assert fleet.device("dev-1") is None
    [kept] = fleet.certificates("dev-1")
    assert (kept.serial, kept.status) == (issued.record.serial, CertificateStatus.REVOKED)
    crl = fleet.authority.current_crl()
    assert crl.get_revoked_certificate_by_serial_number(
        issued.certificate.serial_number) is not None
    actions = [e.action for e in fleet.audit() if e.device_id == "dev-1"]
    assert actions == ["enroll", "device.revoke", "device.delete"]


def test_a_deleted_id_enrolls_as_a_new_device_but_never_with_a_compromised_key(
        fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    key = fleet.keys["dev-1"]
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="operator")
    fleet.authority.delete_device(device_id="dev-1", actor="operator")
    token = fleet.token()
    with fleet.refused(KeyPolicyError, "enroll", match="revoked for keyCompromise"):
        fleet.enroll("dev-1", token, key=key)
    fleet.clock.advance(seconds=1)
    fresh = fleet.enroll("dev-1", key=new_key())
    assert fresh.record.status == CertificateStatus.ACTIVE
    assert [c.status for c in fleet.certificates("dev-1")] == [CertificateStatus.REVOKED,
                                                               CertificateStatus.ACTIVE]


@pytest.mark.parametrize("status", ["active", "suspended"])
def test_delete_refused_for_a_device_that_can_connect(fleet: Fleet, status: str) -> None:
    fleet.enroll("dev-1")
    if status == "suspended":
        fleet.authority.suspend_device(device_id="dev-1", actor="operator")
    with fleet.refused(ConflictError, "device.delete", match=(
            f"device dev-1 is {status}: only a device that never enrolled or is revoked can be "
            r"deleted; revoke it first \(fleet device revoke dev-1 --reason REASON\)")):
        fleet.authority.delete_device(device_id="dev-1", actor="operator")
    assert fleet.device("dev-1") is not None


def test_delete_refused_unknown_device(fleet: Fleet) -> None:
    with fleet.refused(NotFoundError, "device.delete", match="unknown device 'ghost'"):
        fleet.authority.delete_device(device_id="ghost", actor="operator")
