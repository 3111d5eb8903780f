"""OCSP (RFC 6960) requests and responses, with the profile of RFC 5019 and the nonce rules
of RFC 8954: read a request, sign a response with a delegated responder, or say why not.

A request asks about one certificate (RFC 5019 2.1.1: one Request per OCSPRequest); its
CertID names the issuer by hashes of its name and key, in the hash algorithm the client
chose, and the response names it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp

from fleet.errors import PKIError
from fleet.pki.crl import REASON_CODES, check_reason
from fleet.pki.issue import signature_hash
from fleet.pki.keys import PrivateKey

CERT_ID_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (
    hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)
"""The hash algorithms a CertID may use (those of cryptography's OCSP builder)."""
MAX_NONCE_BYTES = 32
"""RFC 8954 2.1: a nonce of 0 or more than 32 octets is refused with malformedRequest."""


class OcspMalformedError(PKIError):
    """Not an OCSP request this responder can read (answered malformedRequest)."""


@dataclass(frozen=True, slots=True)
class CertId:
    """RFC 6960 4.1.1 CertID: which certificate of which issuer."""

    hash_algorithm: hashes.HashAlgorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial_number: int

    @property
    def key(self) -> tuple[str, bytes, bytes, int]:
        """The CertID as a hashable value."""
        return (self.hash_algorithm.name, self.issuer_name_hash, self.issuer_key_hash,
                self.serial_number)

    def names_issuer(self, issuer: x509.Certificate) -> bool:
        """Whether *issuer* is the certificate whose name and key the CertID hashes."""
        name, key = issuer_hashes(issuer, self.hash_algorithm)
        return (name, key) == (self.issuer_name_hash, self.issuer_key_hash)


@dataclass(frozen=True, slots=True)
class OcspQuery:
    cert_id: CertId
    nonce: bytes | None
    """The request's nonce (RFC 8954), echoed in the response; None: the response may be
    cached."""


@dataclass(frozen=True, slots=True)
class Responder:
    """A delegated OCSP responder (RFC 6960 4.2.2.2): its certificate, issued by *issuer*
    for id-kp-OCSPSigning, and its key."""

    certificate: x509.Certificate
    key: PrivateKey
    issuer: x509.Certificate


@dataclass(frozen=True, slots=True)
class CertStatus:
    """What a response says of one certificate."""

    status: ocsp.OCSPCertStatus
    revoked_at: datetime | None = None
    reason: str | None = None
    """An RFC 5280 reason name; None or unspecified: no reason in the response, as in the
    CRL."""

    @classmethod
    def good(cls) -> CertStatus:
        return cls(ocsp.OCSPCertStatus.GOOD)

    @classmethod
    def unknown(cls) -> CertStatus:
        return cls(ocsp.OCSPCertStatus.UNKNOWN)

    @classmethod
    def revoked(cls, at: datetime, reason: str | None) -> CertStatus:
        return cls(ocsp.OCSPCertStatus.REVOKED, at, check_reason(reason) if reason else None)

    @property
    def name(self) -> str:
        return self.status.name.lower()


def parse_ocsp_request(der: bytes) -> OcspQuery:
    """The one certificate a DER OCSPRequest asks about, and its nonce; OcspMalformedError
    for anything else (not DER, several requests, a CertID hash or nonce this responder
    does not take)."""
    try:
        request = ocsp.load_der_ocsp_request(der)
        algorithm = request.hash_algorithm
        extensions = request.extensions
        nonce_extension = next(
            (e.value for e in extensions if isinstance(e.value, x509.OCSPNonce)), None)
    except UnsupportedAlgorithm as exc:
        raise OcspMalformedError(f"the CertID hash algorithm is not supported: {exc}") from exc
    except x509.DuplicateExtension as exc:
        raise OcspMalformedError(f"an extension appears twice: {exc}") from exc
    except (ValueError, NotImplementedError) as exc:  # the latter: several requests
        raise OcspMalformedError(f"not a DER OCSP request of one certificate: {exc}") from exc
    if not isinstance(algorithm, CERT_ID_HASHES):
        raise OcspMalformedError(f"the CertID hash algorithm {algorithm.name} is not supported")
    if (len(request.issuer_name_hash) != algorithm.digest_size
            or len(request.issuer_key_hash) != algorithm.digest_size):
        raise OcspMalformedError(f"the CertID hashes are not {algorithm.name} digests")
    if request.serial_number < 0:  # RFC 5280 4.1.2.2: serials are positive; none is answered
        raise OcspMalformedError("the CertID serial number is negative")
    nonce = nonce_extension.nonce if nonce_extension is not None else None
    if nonce is not None and not 1 <= len(nonce) <= MAX_NONCE_BYTES:
        raise OcspMalformedError(
            f"a nonce must be 1 to {MAX_NONCE_BYTES} octets (RFC 8954), got {len(nonce)}")
    return OcspQuery(CertId(algorithm, request.issuer_name_hash, request.issuer_key_hash,
                            request.serial_number), nonce)


def issuer_hashes(issuer: x509.Certificate,
                  algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of *issuer*: digests of its DER subject name and of
    the value of its subjectPublicKey BIT STRING (RFC 6960 4.1.1)."""
    name = hashes.Hash(algorithm)
    name.update(issuer.subject.public_bytes())
    key = hashes.Hash(algorithm)
    key.update(_subject_public_key(issuer.public_key()))
    return name.finalize(), key.finalize()


def _subject_public_key(public_key: CertificatePublicKeyTypes) -> bytes:
    """The content of the subjectPublicKey BIT STRING, for the key types a Fleet CA has."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.PKCS1)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key.public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return public_key.public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)
    raise PKIError(f"no OCSP issuer key hash for a {type(public_key).__name__}")


def build_ocsp_response(*, query: OcspQuery, status: CertStatus, responder: Responder,
                   this_update: datetime, next_update: datetime) -> bytes:
    """A successful basic OCSP response (DER) for *query*, signed by *responder*, naming it
    by key hash and carrying its certificate; the query's nonce, if any, echoed."""
    cert_id = query.cert_id
    reason = status.reason if status.reason != "unspecified" else None
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=cert_id.issuer_name_hash, issuer_key_hash=cert_id.issuer_key_hash,
        serial_number=cert_id.serial_number, algorithm=cert_id.hash_algorithm,
        cert_status=status.status, this_update=this_update, next_update=next_update,
        revocation_time=status.revoked_at,
        revocation_reason=REASON_CODES[reason] if reason else None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, responder.certificate).certificates(
        [responder.certificate])
    if query.nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(query.nonce), critical=False)
    response = builder.sign(responder.key, signature_hash(responder.key))
    return response.public_bytes(serialization.Encoding.DER)


def unsuccessful_ocsp_response(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned OCSP response with only *status* (malformedRequest, unauthorized...)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER)
