"""The pure OCSP parts: reading requests, issuer hashes, building and signing responses."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp

from fleet import pki
from fleet.errors import PKIError
from fleet.pki.ocsp import issuer_hashes

from .x509_factory import cached_key, make_ca

NOW = datetime.now(UTC).replace(microsecond=0)
CA = make_ca(now=NOW)
LEAF = CA.issue("dev-1", now=NOW)


def request_der(*, algorithm: hashes.HashAlgorithm | None = None, nonce: bytes | None = None,
                issuer: x509.Certificate = CA.issuing) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(LEAF, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


@functools.cache
def responder(kind: str = "p256") -> pki.Responder:
    """One responder per key type."""
    key = cached_key(kind)
    cert = CA.sign(pki.ocsp_responder_profile("OCSP", lifetime=timedelta(hours=12)), now=NOW,
                   key=key)
    return pki.Responder(cert, key, CA.issuing)


def build(status: pki.CertStatus, *, kind: str = "p256",
          nonce: bytes | None = None) -> ocsp.OCSPResponse:
    der = pki.build_ocsp_response(
        query=pki.parse_ocsp_request(request_der(nonce=nonce)), status=status,
        responder=responder(kind), this_update=NOW, next_update=NOW + timedelta(hours=1))
    return ocsp.load_der_ocsp_response(der)


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(),
                                       hashes.SHA512()])
def test_a_request_names_its_issuer_in_its_hash_algorithm(
        algorithm: hashes.HashAlgorithm) -> None:
    query = pki.parse_ocsp_request(request_der(algorithm=algorithm))
    assert query.cert_id.serial_number == LEAF.serial_number
    assert query.cert_id.hash_algorithm.name == algorithm.name
    assert query.cert_id.names_issuer(CA.issuing)
    assert not query.cert_id.names_issuer(CA.root)
    assert query.nonce is None


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048", "ed25519"])
def test_issuer_hashes_are_those_of_cryptography(kind: str) -> None:
    """issuerKeyHash over the subjectPublicKey BIT STRING for every CA key type."""
    other = make_ca(now=NOW, name=kind)
    key = cached_key(kind)
    issuer = pki.issue_certificate(
        profile=pki.ca_profile("Issuing", lifetime=timedelta(days=1), path_length=0),
        public_key=key.public_key(), issuer_key=other.root_key, issuer=other.root, now=NOW)
    leaf = pki.issue_certificate(profile=pki.identity_profile(
        pki.Identity("device", "d"), trust_domain="t.example", lifetime=timedelta(days=1)),
        public_key=cached_key("p256").public_key(), issuer_key=key,
        issuer=issuer, now=NOW)
    request = ocsp.load_der_ocsp_request(
        ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA256()).build()
        .public_bytes(serialization.Encoding.DER))
    assert issuer_hashes(issuer, hashes.SHA256()) == (request.issuer_name_hash,
                                                      request.issuer_key_hash)


def test_a_nonce_is_read() -> None:
    assert pki.parse_ocsp_request(request_der(nonce=b"\x01" * 32)).nonce == b"\x01" * 32


def two_requests() -> bytes:
    """An OCSPRequest whose requestList holds the same Request twice (short DER lengths:
    a one-octet serial)."""
    der = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        *issuer_hashes(CA.issuing, hashes.SHA1()), 5, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)
    one = der[6:]  # 30 LL (OCSPRequest) 30 LL (TBSRequest) 30 LL (requestList), then Request
    both = one + one
    request_list = b"\x30" + bytes([len(both)]) + both
    tbs = b"\x30" + bytes([len(request_list)]) + request_list
    return b"\x30\x81" + bytes([len(tbs)]) + tbs


def negative_serial() -> bytes:
    der = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        *issuer_hashes(CA.issuing, hashes.SHA1()), 5, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)
    assert der.endswith(b"\x02\x01\x05")
    return der[:-1] + b"\xfb"  # INTEGER -5


def tlv(tag: int, body: bytes) -> bytes:
    length = len(body)
    encoded = bytes([length]) if length < 128 else b"\x81" + bytes([length])
    return bytes([tag]) + encoded + body


def two_nonces() -> bytes:
    """An OCSPRequest with its nonce extension twice."""
    der = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        *issuer_hashes(CA.issuing, hashes.SHA1()), 5, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)
    nonce = tlv(0x30, tlv(0x06, bytes.fromhex("2b0601050507300102"))  # id-pkix-ocsp-nonce
                + tlv(0x04, tlv(0x04, b"n" * 16)))
    return tlv(0x30, tlv(0x30, tlv(0x30, der[6:]) + tlv(0xA2, tlv(0x30, nonce + nonce))))


@pytest.mark.parametrize(("body", "says"), [
    (b"", "not a DER OCSP request"),
    (b"\x30\x00", "not a DER OCSP request"),
    (two_requests(), "more than one request"),
    (two_nonces(), "extension appears twice"),
    (negative_serial(), "serial number is negative"),
    (request_der(nonce=b""), "RFC 8954"),
    (request_der(nonce=b"x" * 33), "RFC 8954"),
])
def test_malformed_requests_are_refused(body: bytes, says: str) -> None:
    with pytest.raises(pki.OcspMalformedError, match=says):
        pki.parse_ocsp_request(body)


def test_good_names_the_responder_by_key_hash_and_carries_it() -> None:
    response = build(pki.CertStatus.good())
    signer = responder("p256")
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.certificates == [signer.certificate]
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        signer.certificate.public_key()).digest
    assert response.responder_name is None
    assert (response.this_update_utc, response.next_update_utc) == (NOW,
                                                                    NOW + timedelta(hours=1))
    assert response.serial_number == LEAF.serial_number
    assert response.issuer_key_hash == issuer_hashes(CA.issuing, hashes.SHA1())[1]


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048", "ed25519"])
def test_the_signature_verifies_with_the_responder_key(kind: str) -> None:
    response = build(pki.CertStatus.good(), kind=kind)
    key = response.certificates[0].public_key()
    data, signature = response.tbs_response_bytes, response.signature
    algorithm = response.signature_hash_algorithm
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    elif isinstance(key, rsa.RSAPublicKey):
        assert algorithm is not None
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert algorithm is not None
        key.verify(signature, data, ec.ECDSA(algorithm))


def test_revoked_carries_time_and_reason() -> None:
    at = NOW - timedelta(minutes=7)
    response = build(pki.CertStatus.revoked(at, "keyCompromise"))
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == at
    assert response.revocation_reason == x509.ReasonFlags.key_compromise


@pytest.mark.parametrize("reason", [None, "unspecified"])
def test_revoked_without_a_reason_or_unspecified_carries_none(reason: str | None) -> None:
    response = build(pki.CertStatus.revoked(NOW, reason))
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is None


def test_an_unknown_reason_is_refused() -> None:
    with pytest.raises(PKIError, match="unknown revocation reason"):
        pki.CertStatus.revoked(NOW, "stolen")


def test_the_nonce_is_echoed_only_when_asked() -> None:
    echoed = build(pki.CertStatus.unknown(), nonce=b"n" * 16)
    assert echoed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    assert echoed.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    with pytest.raises(x509.ExtensionNotFound):
        build(pki.CertStatus.good()).extensions.get_extension_for_class(x509.OCSPNonce)


@pytest.mark.parametrize("status", [ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
                                    ocsp.OCSPResponseStatus.UNAUTHORIZED,
                                    ocsp.OCSPResponseStatus.TRY_LATER])
def test_unsuccessful_responses_hold_only_their_status(
        status: ocsp.OCSPResponseStatus) -> None:
    response = ocsp.load_der_ocsp_response(pki.unsuccessful_ocsp_response(status))
    assert response.response_status == status
