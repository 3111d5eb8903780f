"""OCSP as policy: each issuing CA in use answers for its own certificates through a
delegated responder, saying what its CRL says; other issuers are unauthorized; responses
without a nonce are kept until something changes."""

from __future__ import annotations

import json
import stat
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from pki.x509_factory import make_ca

from fleet import pki
from fleet.authority import Authority, OcspAnswer
from fleet.authority.ocsp import CACHE_SIZE
from fleet.ca import load_trust
from fleet.ocsp_responder import responder_path

from .conftest import Fleet


def request(cert: x509.Certificate, issuer: x509.Certificate, *, nonce: bytes | None = None,
            algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def ask(fleet: Fleet, cert: x509.Certificate, issuer: x509.Certificate | None = None,
        **kwargs: object) -> tuple[OcspAnswer, ocsp.OCSPResponse]:
    answer = fleet.authority.ocsp_answer(
        request(cert, issuer or fleet.authority.ca.issuing, **kwargs))  # type: ignore[arg-type]
    return answer, ocsp.load_der_ocsp_response(answer.der)


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def crl_entry(fleet: Fleet, cert: x509.Certificate) -> x509.RevokedCertificate | None:
    return fleet.authority.current_crl().get_revoked_certificate_by_serial_number(
        cert.serial_number)


def test_an_active_certificate_is_good_signed_by_a_delegated_responder(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    answer, response = ask(fleet, cert)
    assert answer.outcome == "good"
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == cert.serial_number
    [responder] = response.certificates
    responder.verify_directly_issued_by(fleet.authority.ca.issuing)
    assert responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING])
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        responder.public_key()).digest  # type: ignore[arg-type]
    public_key = responder.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    public_key.verify(response.signature, response.tbs_response_bytes,
                      ec.ECDSA(response.signature_hash_algorithm))
    assert response.this_update_utc == fleet.clock()
    assert response.next_update_utc == fleet.clock() + fleet.authority.settings.ocsp_next_update
    assert (answer.this_update, answer.next_update) == (response.this_update_utc,
                                                        response.next_update_utc)


def test_a_revoked_certificate_is_revoked_with_the_time_and_reason_of_the_crl(
        fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    fleet.clock.advance(minutes=3)
    fleet.authority.revoke_certificate(serial=serial(cert), reason="keyCompromise", actor="ops")
    answer, response = ask(fleet, cert)
    entry = crl_entry(fleet, cert)
    assert entry is not None
    assert answer.outcome == "revoked"
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.key_compromise
    assert response.revocation_time_utc == entry.revocation_date_utc == fleet.clock()


def test_unspecified_is_no_reason_as_on_the_crl(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    fleet.authority.revoke_certificate(serial=serial(cert), reason="unspecified", actor="ops")
    _, response = ask(fleet, cert)
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is None


def test_superseded_is_good_in_its_grace_then_revoked_superseded_from_its_end(
        fleet: Fleet) -> None:
    old = fleet.enroll("dev-1").certificate
    fleet.reenroll(old)
    superseded_at = fleet.clock()
    in_grace, response = ask(fleet, old)
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert crl_entry(fleet, old) is None
    grace = fleet.authority.settings.superseded_grace
    fleet.clock.advance(seconds=grace.total_seconds())
    past, response = ask(fleet, old)
    assert past.der != in_grace.der, "the kept response was served past the grace"
    entry = crl_entry(fleet, old)
    assert entry is not None
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.superseded
    assert response.revocation_time_utc == entry.revocation_date_utc == superseded_at + grace


def test_a_serial_the_issuing_ca_never_issued_is_unknown(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    forged = fleet.authority.ocsp_answer(
        ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            *pki.ocsp.issuer_hashes(fleet.authority.ca.issuing, hashes.SHA256()),
            cert.serial_number + 1, hashes.SHA256()).build().public_bytes(
                serialization.Encoding.DER))
    response = ocsp.load_der_ocsp_response(forged.der)
    assert forged.outcome == "unknown"
    assert response.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    assert response.serial_number == cert.serial_number + 1
    assert response.hash_algorithm.name == "sha256"


def test_a_certificate_of_another_ca_is_unauthorized(fleet: Fleet) -> None:
    other = make_ca(now=fleet.clock(), name="Other")
    foreign = other.issue("dev-1", now=fleet.clock())
    answer, response = ask(fleet, foreign, other.issuing)
    assert answer.outcome == "unauthorized"
    assert response.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.parametrize("body", [b"", b"\x30\x03\x02\x01\x01", b"not der at all"])
def test_malformed_requests_get_malformed_request(fleet: Fleet, body: bytes) -> None:
    answer = fleet.authority.ocsp_answer(body)
    assert answer.outcome == "malformed_request"
    assert ocsp.load_der_ocsp_response(answer.der).response_status == \
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert answer.detail


@pytest.mark.parametrize("size", [0, 33])
def test_a_nonce_of_no_or_more_than_32_octets_is_malformed(fleet: Fleet, size: int) -> None:
    cert = fleet.enroll("dev-1").certificate
    answer, response = ask(fleet, cert, nonce=b"n" * size)
    assert response.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert "RFC 8954" in answer.detail


def test_a_nonce_is_echoed_and_its_response_never_kept(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    first, response = ask(fleet, cert, nonce=b"a" * 16)
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"a" * 16
    assert (first.this_update, first.next_update) == (None, None)
    second, _ = ask(fleet, cert, nonce=b"a" * 16)
    assert second.der != first.der  # signed anew (ECDSA signatures differ)


def test_without_a_nonce_the_response_is_kept_until_a_revocation(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    other = fleet.enroll("dev-2").certificate
    first, response = ask(fleet, cert)
    with pytest.raises(x509.ExtensionNotFound):
        response.extensions.get_extension_for_class(x509.OCSPNonce)
    fleet.clock.advance(minutes=1)
    assert ask(fleet, cert)[0] == first
    fleet.authority.revoke_certificate(serial=serial(other), reason="keyCompromise",
                                       actor="ops")
    after, response = ask(fleet, cert)
    assert after != first  # any revocation event makes it fresh
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert after.this_update == fleet.clock()


def test_a_kept_response_is_renewed_after_half_its_validity(fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    first, _ = ask(fleet, cert)
    half = fleet.authority.settings.ocsp_next_update / 2
    fleet.clock.advance(seconds=half.total_seconds() - 1)
    assert ask(fleet, cert)[0] == first
    fleet.clock.advance(seconds=1)
    assert ask(fleet, cert)[0].this_update == fleet.clock()


def test_kept_responses_are_bounded(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet.authority.ocsp.CACHE_SIZE", 2)
    certs = [fleet.enroll(f"dev-{n}").certificate for n in range(3)]
    for cert in certs:
        ask(fleet, cert)
    kept = fleet.authority._ocsp_kept
    assert len(kept) == 2
    assert {key[3] for key in kept} == {certs[1].serial_number, certs[2].serial_number}
    assert CACHE_SIZE == 10_000


def test_a_serial_of_another_issuing_ca_in_use_is_unknown_to_this_one(fleet: Fleet) -> None:
    old = fleet.enroll("dev-old").certificate
    first_ca = fleet.authority.ca.issuing
    fleet.authority.rotate_issuing(actor="operator:test")
    new = fleet.enroll("dev-new").certificate
    trust = load_trust(fleet.authority.settings)
    # each issuing CA in use answers for its own certificates, with its own responder
    _, of_old = ask(fleet, old, first_ca)
    _, of_new = ask(fleet, new, trust.issuing)
    assert of_old.certificate_status == of_new.certificate_status == ocsp.OCSPCertStatus.GOOD
    of_old.certificates[0].verify_directly_issued_by(first_ca)
    of_new.certificates[0].verify_directly_issued_by(trust.issuing)
    # the new CA's name and key with the old certificate's serial: not one it issued
    crossed = fleet.authority.ocsp_answer(
        ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            *pki.ocsp.issuer_hashes(trust.issuing, hashes.SHA1()), old.serial_number,
            hashes.SHA1()).build().public_bytes(serialization.Encoding.DER))
    assert crossed.outcome == "unknown"


def test_a_retired_issuing_ca_is_unauthorized(fleet: Fleet) -> None:
    old = fleet.enroll("dev-old").certificate
    first_ca = fleet.authority.ca.issuing
    fleet.authority.rotate_issuing(actor="operator:test")
    fleet.authority.retire_issuing(actor="operator:test", force=True)
    answer, _ = ask(fleet, old, first_ca)
    assert answer.outcome == "unauthorized"


def test_the_responder_is_kept_0600_reused_and_renewed_at_half_its_lifetime(
        fleet: Fleet) -> None:
    cert = fleet.enroll("dev-1").certificate
    settings = fleet.authority.settings
    _, response = ask(fleet, cert)
    responder = response.certificates[0]
    path = responder_path(settings, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    # a new process (another Authority) takes the one on disk
    again = Authority(settings=settings, engine=fleet.authority.engine,
                      ca=fleet.authority.ca, clock=fleet.clock)
    fresh = again.ocsp_answer(request(cert, again.ca.issuing, nonce=b"x" * 16))
    assert ocsp.load_der_ocsp_response(fresh.der).certificates[0] == responder
    fleet.clock.advance(seconds=settings.ocsp_responder_lifetime.total_seconds() / 2)
    _, renewed = ask(fleet, cert, nonce=b"y" * 16)
    assert renewed.certificates[0] != responder
    assert x509.load_pem_x509_certificate(
        path.read_bytes()[path.read_bytes().index(b"-----BEGIN CERTIFICATE"):]) == \
        renewed.certificates[0]
    events = [e for e in fleet.audit() if e.action == "ca.ocsp-responder"]
    assert [json.loads(e.detail or "{}")["issuing"] for e in events] == [1, 1]
    assert events[-1].serial == serial(renewed.certificates[0])


def test_no_response_outlives_its_responder(fleet: Fleet) -> None:
    """Near the issuing CA's end, which caps the responder's lifetime."""
    cert = fleet.enroll("dev-1").certificate
    end = fleet.authority.ca.issuing.not_valid_after_utc
    fleet.clock.now = end - timedelta(minutes=30)
    answer, response = ask(fleet, cert)
    assert response.certificates[0].not_valid_after_utc == end
    assert response.next_update_utc == answer.next_update == end
