"""simplereenroll: the current certificate authorizes its own renewal (same key) or rekey."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pki.x509_factory import cached_key, der, make_ca, make_csr, new_key, spiffe, subject

from fleet import pki
from fleet.errors import (
    CertificateNotActiveError,
    CSRError,
    DeviceNotActiveError,
    ForbiddenError,
    IdentityError,
    KeyPolicyError,
    ProfileError,
)
from fleet.pki import Identity
from fleet.registry import CertificateStatus, DeviceStatus

from .conftest import Fleet


def enrolled(fleet: Fleet, device_id: str = "dev-1") -> x509.Certificate:
    return fleet.enroll(device_id).certificate


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def test_renew_with_the_same_key(fleet: Fleet) -> None:
    old = enrolled(fleet)
    fleet.clock.advance(days=20)
    new = fleet.reenroll(old)
    assert new.certificate.public_key() == old.public_key()
    assert new.certificate.subject == old.subject
    assert new.certificate.not_valid_after_utc == fleet.clock.now + timedelta(days=30)
    assert new.record.replaces == serial(old)
    assert new.record.status == CertificateStatus.ACTIVE
    previous = fleet.certificate(serial(old))
    assert previous is not None
    assert previous.status == CertificateStatus.SUPERSEDED
    device = fleet.device("dev-1")
    assert device is not None
    assert device.status == DeviceStatus.ACTIVE
    event = fleet.audit()[-1]
    assert (event.action, event.outcome, event.serial) == ("reenroll", "ok", new.record.serial)
    assert json.loads(event.detail or "{}") == {
        "replaces": serial(old), "mode": "renew", "key": "EC P-256"}


def test_rekey_with_a_new_key(fleet: Fleet) -> None:
    old = enrolled(fleet)
    key = new_key()
    new = fleet.reenroll(old, key=key)
    assert new.certificate.public_key() == key.public_key() != old.public_key()
    assert json.loads(fleet.audit()[-1].detail or "{}")["mode"] == "rekey"
    previous = fleet.certificate(serial(old))
    assert previous is not None
    assert previous.status == CertificateStatus.SUPERSEDED


def test_rekey_to_another_key_type(fleet: Fleet) -> None:
    new = fleet.reenroll(enrolled(fleet), key=cached_key("ed25519"))
    assert json.loads(fleet.audit()[-1].detail or "{}")["key"] == "Ed25519"
    assert new.certificate.public_key() == cached_key("ed25519").public_key()


def test_csr_may_repeat_the_full_subject_and_san(fleet: Fleet) -> None:
    old = enrolled(fleet)
    csr = make_csr(name=old.subject, uris=[spiffe("dev-1")], key=fleet.keys["dev-1"])
    assert fleet.reenroll(old, csr=der(csr)).record.replaces == serial(old)


def test_a_renewed_certificate_renews_again(fleet: Fleet) -> None:
    cert = enrolled(fleet)
    chain = [serial(cert)]
    for _ in range(3):
        cert = fleet.reenroll(cert).certificate
        chain.append(serial(cert))
    statuses = [fleet.certificate(s).status for s in chain]  # type: ignore[union-attr]
    assert statuses == ["superseded"] * 3 + ["active"]


def test_superseded_certificate_still_admitted_until_it_expires(fleet: Fleet) -> None:
    old = enrolled(fleet)
    fleet.reenroll(old)
    admission = fleet.authority.admit(certificate=old)
    assert admission.identity == Identity("device", "dev-1")


# -- refusals ---------------------------------------------------------------------------------

def test_reenroll_refused_superseded_certificate(fleet: Fleet) -> None:
    old = enrolled(fleet)
    fleet.reenroll(old)
    with fleet.refused(CertificateNotActiveError, "reenroll", match="superseded"):
        fleet.reenroll(old)


def test_reenroll_refused_revoked_certificate(fleet: Fleet) -> None:
    cert = enrolled(fleet)
    fleet.authority.revoke_certificate(serial=serial(cert), reason="keyCompromise", actor="ops")
    with fleet.refused(CertificateNotActiveError, "reenroll", match="revoked"):
        fleet.reenroll(cert)


def test_reenroll_refused_revoked_device(fleet: Fleet) -> None:
    cert = enrolled(fleet)
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="ops")
    with fleet.refused(CertificateNotActiveError, "reenroll", match="revoked"):
        fleet.reenroll(cert)


def test_reenroll_refused_suspended_device(fleet: Fleet) -> None:
    cert = enrolled(fleet)
    fleet.authority.suspend_device(device_id="dev-1", actor="ops")
    with fleet.refused(DeviceNotActiveError, "reenroll", match="suspended"):
        fleet.reenroll(cert)


def test_reenroll_refused_subject_mismatch(fleet: Fleet, subtests: pytest.Subtests) -> None:
    cert = enrolled(fleet)
    names = {
        "other-cn": subject("dev-2"),
        "other-organization": subject("dev-1", x509.NameAttribute(
            NameOID.ORGANIZATION_NAME, "Evil")),
        "extra-attribute": subject("dev-1", x509.NameAttribute(
            NameOID.ORGANIZATIONAL_UNIT_NAME, "x")),
    }
    for case, name in names.items():
        with subtests.test(case), fleet.refused(IdentityError, "reenroll", match="identical"):
            fleet.reenroll(cert, csr=der(make_csr(name=name)))


def test_reenroll_refused_san_mismatch(fleet: Fleet, subtests: pytest.Subtests) -> None:
    cert = enrolled(fleet)
    for uri in [spiffe("dev-2"), spiffe("dev-1", "evil.example")]:
        with subtests.test(uri=uri), fleet.refused(IdentityError, "reenroll", match="identical"):
            fleet.reenroll(cert, csr=der(make_csr("dev-1", uris=[uri])))


def test_reenroll_refused_certificate_from_another_ca(fleet: Fleet) -> None:
    enrolled(fleet)
    foreign = make_ca(now=fleet.clock.now, name="Fleet").issue("dev-1", now=fleet.clock.now)
    with fleet.refused(CertificateNotActiveError, "reenroll", match="signature|issued by"):
        fleet.reenroll(foreign)


def test_reenroll_refused_expired_certificate(fleet: Fleet) -> None:
    cert = enrolled(fleet)
    fleet.clock.advance(days=30)
    with fleet.refused(CertificateNotActiveError, "reenroll", match="expired"):
        fleet.reenroll(cert)


def test_reenroll_refused_unknown_certificate(fleet: Fleet) -> None:
    """Validly signed by the fleet CA but never recorded (e.g. a leaked CA key)."""
    enrolled(fleet)
    ca = fleet.authority.ca
    stray = pki.issue_certificate(
        profile=pki.identity_profile(Identity("device", "dev-1"), trust_domain="fleet.local",
                                     lifetime=timedelta(days=1)),
        public_key=cached_key("p256").public_key(), issuer_key=ca.issuing_key,
        issuer=ca.issuing, now=fleet.clock.now)
    with fleet.refused(CertificateNotActiveError, "reenroll", match="not in the registry"):
        fleet.reenroll(stray, key=cached_key("p256"))


def test_reenroll_refused_forged_certificate_reusing_a_known_serial(fleet: Fleet) -> None:
    real = enrolled(fleet)
    ca = fleet.authority.ca
    forged = pki.issue_certificate(
        profile=pki.identity_profile(Identity("device", "dev-1"), trust_domain="fleet.local",
                                     lifetime=timedelta(days=1)),
        public_key=cached_key("p256").public_key(), issuer_key=ca.issuing_key,
        issuer=ca.issuing, now=fleet.clock.now, serial_number=real.serial_number)
    with fleet.refused(CertificateNotActiveError, "reenroll", match="not in the registry"):
        fleet.reenroll(forged, key=cached_key("p256"))


def test_reenroll_refused_service_certificate(fleet: Fleet) -> None:
    issued = fleet.authority.issue_service_certificate(
        name="telemetry", public_key=cached_key("p256").public_key(), actor="ops")
    with fleet.refused(ForbiddenError, "reenroll", match="cannot re-enroll"):
        fleet.authority.reenroll(client_certificate=issued.certificate,
                                 csr=der(make_csr("telemetry")), actor="est")


def test_reenroll_refused_malformed_csr(fleet: Fleet) -> None:
    cert = enrolled(fleet)
    with fleet.refused(CSRError, "reenroll"):
        fleet.reenroll(cert, csr=b"garbage")


def test_reenroll_refused_unsupported_key(fleet: Fleet) -> None:
    cert = enrolled(fleet)
    with fleet.refused(KeyPolicyError, "reenroll", match="RSA 1024"):
        fleet.reenroll(cert, key=cached_key("rsa1024"))


def test_reenroll_refused_csr_requesting_server_auth(fleet: Fleet) -> None:
    cert = enrolled(fleet)
    csr = make_csr("dev-1", extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])])
    with fleet.refused(ProfileError, "reenroll", match="serverAuth"):
        fleet.reenroll(cert, csr=der(csr))
