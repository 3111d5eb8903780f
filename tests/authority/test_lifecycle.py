"""Operator actions: revoke a device or a certificate, suspend/resume, service certs, admission."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from pki.x509_factory import cached_key, make_ca

from fleet.authority import Authority
from fleet.ca import load_trust
from fleet.errors import (
    CertificateNotActiveError,
    ConflictError,
    DeviceNotActiveError,
    IdentityError,
    KeyPolicyError,
    NotFoundError,
    PKIError,
    TokenError,
)
from fleet.pki import Identity
from fleet.registry import CertificateStatus, DeviceStatus

from .conftest import Fleet


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


# -- revoke a device --------------------------------------------------------------------------

def test_revoke_device_revokes_every_certificate_and_unused_token(fleet: Fleet) -> None:
    first = fleet.enroll("dev-1", fleet.token(device_id="dev-1")).certificate
    second = fleet.reenroll(first).certificate
    spare = fleet.token(device_id="dev-1")
    other = fleet.enroll("dev-2").certificate
    last_event = fleet.authority.last_revocation_id()
    fleet.clock.advance(minutes=5)

    device = fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise",
                                           actor="ops")
    assert (device.status, device.status_reason) == (DeviceStatus.REVOKED, "keyCompromise")
    for cert in (first, second):
        row = fleet.certificate(serial(cert))
        assert row is not None
        assert (row.status, row.revocation_reason, row.revoked_at) == (
            CertificateStatus.REVOKED, "keyCompromise", fleet.clock.now)
    untouched = fleet.certificate(serial(other))
    assert untouched is not None
    assert untouched.status == CertificateStatus.ACTIVE
    spare_row = next(t for t in fleet.tokens() if t.id == spare.split(".")[0])
    assert spare_row.revoked_at == fleet.clock.now
    events = fleet.authority.revocations_after(last_event)
    assert [(e.kind, e.device_id, e.serial) for e in events] == [("revoked", "dev-1", None)]
    assert fleet.authority.last_revocation_id() == events[0].id
    audit = fleet.audit()[-1]
    assert (audit.action, audit.outcome, audit.reason) == ("device.revoke", "ok", "keyCompromise")
    detail = json.loads(audit.detail or "{}")
    assert sorted(detail["serials"]) == sorted([serial(first), serial(second)])
    assert detail["tokens"] == [spare.split(".")[0]]


def test_revoked_device_can_never_come_back(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="ops")
    with fleet.refused(DeviceNotActiveError, "token.create"):
        fleet.token(device_id="dev-1")
    token = fleet.token()
    with fleet.refused(DeviceNotActiveError, "enroll"):
        fleet.enroll("dev-1", token)
    with fleet.refused(CertificateNotActiveError, "reenroll"):
        fleet.reenroll(cert)
    with pytest.raises(CertificateNotActiveError, match="revoked"):
        fleet.authority.admit(certificate=cert)
    with fleet.refused(ConflictError, "device.resume"):
        fleet.authority.resume_device(device_id="dev-1", actor="ops")


def test_revoke_a_pending_device(fleet: Fleet) -> None:
    token = fleet.token(device_id="dev-1")
    fleet.authority.revoke_device(device_id="dev-1", reason="affiliationChanged", actor="ops")
    with fleet.refused(TokenError, "enroll", match="revoked"):
        fleet.enroll("dev-1", token)
    unbound = fleet.token()
    with fleet.refused(DeviceNotActiveError, "enroll", match="revoked"):
        fleet.enroll("dev-1", unbound)


def test_revoke_device_refused_twice(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="ops")
    with fleet.refused(ConflictError, "device.revoke", match="already revoked"):
        fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="ops")


def test_revoke_device_refused_unknown(fleet: Fleet, subtests: pytest.Subtests) -> None:
    for device_id in ["ghost", "x" * 80, "bad\x00id"]:
        with subtests.test(device_id=device_id), \
                fleet.refused(NotFoundError, "device.revoke", match="unknown device"):
            fleet.authority.revoke_device(device_id=device_id, reason="keyCompromise",
                                          actor="ops")


def test_revoke_device_refused_invalid_reason(fleet: Fleet, subtests: pytest.Subtests) -> None:
    fleet.enroll("dev-1")
    for reason in ["compromised", "", "removeFromCRL", "KeyCompromise"]:
        with subtests.test(reason=reason), \
                fleet.refused(PKIError, "device.revoke", match="unknown revocation reason"):
            fleet.authority.revoke_device(device_id="dev-1", reason=reason, actor="ops")


# -- revoke one certificate -------------------------------------------------------------------

def test_revoke_certificate(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    last_event = fleet.authority.last_revocation_id()
    row = fleet.authority.revoke_certificate(serial=serial(cert), reason="superseded",
                                             actor="ops")
    assert (row.status, row.revocation_reason) == (CertificateStatus.REVOKED, "superseded")
    events = fleet.authority.revocations_after(last_event)
    assert [(e.kind, e.serial, e.device_id) for e in events] == [
        ("revoked", serial(cert), "dev-1")]
    device = fleet.device("dev-1")
    assert device is not None
    assert device.status == DeviceStatus.ACTIVE  # the device may enroll again with a bound token
    with pytest.raises(CertificateNotActiveError):
        fleet.authority.admit(certificate=cert)
    fresh = fleet.enroll("dev-1", fleet.token(device_id="dev-1")).certificate
    assert fleet.authority.admit(certificate=fresh).serial == serial(fresh)


def test_revoke_certificate_accepts_colon_and_upper_case_serials(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    text = serial(cert).upper()
    text = ":".join(text[i:i + 2] for i in range(0, len(text), 2))
    assert fleet.authority.revoke_certificate(serial=text, reason="keyCompromise",
                                              actor="ops").serial == serial(cert)


def test_revoke_certificate_refused_unknown(fleet: Fleet, subtests: pytest.Subtests) -> None:
    for serial_text in ["abcdef", "abcdef" * 10, "not-hex", "\x00"]:
        with subtests.test(serial=serial_text), \
                fleet.refused(NotFoundError, "cert.revoke", match="unknown certificate"):
            fleet.authority.revoke_certificate(serial=serial_text, reason="keyCompromise",
                                               actor="ops")


def test_revoke_certificate_refused_twice(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    fleet.authority.revoke_certificate(serial=serial(cert), reason="keyCompromise", actor="ops")
    with fleet.refused(ConflictError, "cert.revoke", match="already revoked"):
        fleet.authority.revoke_certificate(serial=serial(cert), reason="keyCompromise",
                                           actor="ops")


def test_revoke_certificate_refused_invalid_reason(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    with fleet.refused(PKIError, "cert.revoke", match="unknown revocation reason"):
        fleet.authority.revoke_certificate(serial=serial(cert), reason="oops", actor="ops")


# -- suspend and resume ----------------------------------------------------------------------

def test_suspend_and_resume(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    last_event = fleet.authority.last_revocation_id()
    device = fleet.authority.suspend_device(device_id="dev-1", actor="ops", reason="maintenance")
    assert (device.status, device.status_reason) == (DeviceStatus.SUSPENDED, "maintenance")
    events = fleet.authority.revocations_after(last_event)
    assert [(e.kind, e.device_id) for e in events] == [("suspended", "dev-1")]
    with pytest.raises(DeviceNotActiveError, match="suspended"):
        fleet.authority.admit(certificate=cert)
    row = fleet.certificate(serial(cert))
    assert row is not None
    assert row.status == CertificateStatus.ACTIVE  # suspension is not revocation

    device = fleet.authority.resume_device(device_id="dev-1", actor="ops")
    assert (device.status, device.status_reason) == (DeviceStatus.ACTIVE, None)
    assert fleet.authority.admit(certificate=cert).group == "sensors"
    assert [(e.action, e.outcome) for e in fleet.audit()[-2:]] == [
        ("device.suspend", "ok"), ("device.resume", "ok")]


def test_suspend_refused_twice(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    fleet.authority.suspend_device(device_id="dev-1", actor="ops")
    with fleet.refused(ConflictError, "device.suspend", match="suspended, not active"):
        fleet.authority.suspend_device(device_id="dev-1", actor="ops")


def test_suspend_refused_pending_or_revoked(fleet: Fleet) -> None:
    fleet.token(device_id="dev-1")
    with fleet.refused(ConflictError, "device.suspend", match="pending"):
        fleet.authority.suspend_device(device_id="dev-1", actor="ops")
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="ops")
    with fleet.refused(ConflictError, "device.suspend", match="revoked"):
        fleet.authority.suspend_device(device_id="dev-1", actor="ops")


def test_suspend_refused_unknown(fleet: Fleet) -> None:
    with fleet.refused(NotFoundError, "device.suspend"):
        fleet.authority.suspend_device(device_id="ghost", actor="ops")


def test_resume_refused_active(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    with fleet.refused(ConflictError, "device.resume", match="not suspended"):
        fleet.authority.resume_device(device_id="dev-1", actor="ops")


def test_revoke_a_suspended_device(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    fleet.authority.suspend_device(device_id="dev-1", actor="ops")
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="ops")
    row = fleet.certificate(serial(cert))
    assert row is not None
    assert row.status == CertificateStatus.REVOKED


# -- service certificates ---------------------------------------------------------------------

def test_issue_service_certificate(fleet: Fleet) -> None:
    key = cached_key("p384")
    issued = fleet.authority.issue_service_certificate(name="telemetry",
                                                       public_key=key.public_key(), actor="ops")
    cert = issued.certificate
    assert cert.public_key() == key.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://fleet.local/service/telemetry"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc == fleet.clock.now + timedelta(days=90)
    row = fleet.certificate(issued.record.serial)
    assert row is not None
    assert (row.service, row.device_id, row.status) == ("telemetry", None, "active")
    event = fleet.audit()[-1]
    assert (event.action, event.outcome, event.serial) == ("service.issue", "ok", row.serial)
    admission = fleet.authority.admit(certificate=cert)
    assert (admission.identity, admission.group) == (Identity("service", "telemetry"), None)


def test_issue_service_certificate_refused_bad_name(fleet: Fleet) -> None:
    with fleet.refused(IdentityError, "service.issue", match="invalid service name"):
        fleet.authority.issue_service_certificate(
            name="../etc", public_key=cached_key("p256").public_key(), actor="ops")


def test_issue_service_certificate_refused_bad_key(fleet: Fleet) -> None:
    with fleet.refused(KeyPolicyError, "service.issue", match="RSA 1024"):
        fleet.authority.issue_service_certificate(
            name="telemetry", public_key=cached_key("rsa1024").public_key(), actor="ops")


# -- broker admission -------------------------------------------------------------------------

def test_admit_returns_identity_group_serial_and_expiry(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1", fleet.token(group="cameras")).certificate
    admission = fleet.authority.admit(certificate=cert)
    assert admission.identity == Identity("device", "dev-1")
    assert admission.group == "cameras"
    assert admission.serial == serial(cert)
    assert admission.usable_until == cert.not_valid_after_utc
    assert not admission.superseded


def test_admit_refused_expired(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    fleet.clock.advance(days=31)
    with pytest.raises(CertificateNotActiveError, match="expired"):
        fleet.authority.admit(certificate=cert)


def test_admit_refused_foreign_ca(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    foreign = make_ca(now=fleet.clock.now, name="Fleet").issue("dev-1", now=fleet.clock.now)
    with pytest.raises(CertificateNotActiveError):
        fleet.authority.admit(certificate=foreign)


def test_admit_chain_verified_refused_certificate_not_in_registry(fleet: Fleet) -> None:
    """Skipping the signature check (TLS did it) still requires this exact certificate."""
    issued = fleet.enroll("dev-1").certificate
    forger = make_ca(now=fleet.clock.now, name="Forger")
    forged = (
        x509.CertificateBuilder()
        .subject_name(issued.subject).issuer_name(issued.issuer)
        .public_key(cached_key("p256").public_key()).serial_number(issued.serial_number)
        .not_valid_before(issued.not_valid_before_utc)
        .not_valid_after(issued.not_valid_after_utc)
    )
    for extension in issued.extensions:
        if not isinstance(extension.value, x509.AuthorityKeyIdentifier | x509.SubjectKeyIdentifier):
            forged = forged.add_extension(extension.value, critical=extension.critical)
    forged_cert = forged.sign(forger.issuing_key, hashes.SHA256())
    with pytest.raises(CertificateNotActiveError, match="not in the registry"):
        fleet.authority.admit(certificate=forged_cert, chain_verified=True)
    with pytest.raises(CertificateNotActiveError, match="signature"):
        fleet.authority.admit(certificate=forged_cert)


def test_admit_with_trust_only_needs_no_ca_key(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    verifier = Authority(settings=fleet.authority.settings, engine=fleet.authority.engine,
                         trust=load_trust(fleet.authority.settings))
    assert verifier.admit(certificate=cert, chain_verified=True).identity.name == "dev-1"
