"""keyCompromise reaches every certificate of the key, and the key is never certified again."""

from __future__ import annotations

from cryptography import x509
from pki.x509_factory import new_key

from fleet import pki
from fleet.errors import CertificateNotActiveError, KeyPolicyError
from fleet.registry import CertificateStatus

from .conftest import Fleet


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def test_key_compromise_revokes_superseded_certificates_of_the_same_key(fleet: Fleet) -> None:
    key = new_key()
    first = fleet.enroll("dev-1", key=key).certificate
    renewed = fleet.reenroll(first, key=key).certificate  # renew: same key
    fleet.authority.revoke_certificate(serial=serial(renewed), reason="keyCompromise",
                                       actor="operator")
    statuses = {c.serial: (c.status, c.revocation_reason) for c in fleet.certificates("dev-1")}
    assert statuses == {serial(first): (CertificateStatus.REVOKED, "keyCompromise"),
                        serial(renewed): (CertificateStatus.REVOKED, "keyCompromise")}
    crl = fleet.authority.current_crl()
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(renewed.serial_number) is not None
    for cert in (first, renewed):
        try:
            fleet.authority.admit(certificate=cert)
            raise AssertionError("a certificate of a compromised key was admitted")
        except CertificateNotActiveError:
            pass
    [event] = [e for e in fleet.audit() if e.action == "cert.revoke"]
    assert serial(first) in (event.detail or "")


def test_other_reasons_revoke_only_the_named_certificate(fleet: Fleet) -> None:
    key = new_key()
    first = fleet.enroll("dev-1", key=key).certificate
    renewed = fleet.reenroll(first, key=key).certificate
    fleet.authority.revoke_certificate(serial=serial(renewed), reason="cessationOfOperation",
                                       actor="operator")
    assert fleet.certificate(serial(first)).status == CertificateStatus.SUPERSEDED  # type: ignore[union-attr]


def test_compromised_key_refused_for_a_later_enrollment(fleet: Fleet) -> None:
    key = new_key()
    cert = fleet.enroll("dev-1", key=key).certificate
    fleet.authority.revoke_certificate(serial=serial(cert), reason="keyCompromise",
                                       actor="operator")
    token = fleet.token(device_id="dev-1")
    with fleet.refused(KeyPolicyError, "enroll", match="keyCompromise"):
        fleet.enroll("dev-1", token, key=key)
    fleet.enroll("dev-1", token, key=new_key())  # a new key and a new token: back in


def test_compromised_key_refused_for_a_rekey(fleet: Fleet) -> None:
    """Another device's compromised key cannot be certified either (a key is one key)."""
    stolen = new_key()
    victim = fleet.enroll("dev-1", key=stolen).certificate
    fleet.authority.revoke_certificate(serial=serial(victim), reason="keyCompromise",
                                       actor="operator")
    other = fleet.enroll("dev-2").certificate
    with fleet.refused(KeyPolicyError, "reenroll", match="keyCompromise"):
        fleet.reenroll(other, key=stolen)
    assert pki.spki_sha256(stolen.public_key()) == fleet.certificate(  # type: ignore[union-attr]
        serial(victim)).spki_sha256
