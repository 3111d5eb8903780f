"""Verifying a leaf certificate against the fleet CA, with a precise reason on failure."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleet.errors import IdentityError
from fleet.pki.identity import Identity, identity_from_certificate


class Reason(enum.StrEnum):
    """Why a certificate is not acceptable."""

    OK = "ok"
    MALFORMED = "malformed"
    UNKNOWN_ISSUER = "unknown-issuer"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    REVOKED = "revoked"
    WRONG_KEY_USAGE = "wrong-key-usage"
    IDENTITY_MISMATCH = "identity-mismatch"


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason
    detail: str
    identity: Identity | None = None

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of PEM data (text around the blocks is allowed, RFC 7468 section 5.2,
    as ``openssl pkcs7 -print_certs`` writes it), or the one certificate of DER data; raises
    ValueError when it is neither.

    DER is read from the raw bytes: it can end in a byte that is ASCII whitespace
    (0x09-0x0d, 0x20), which stripping would cut off.
    """
    if data[:1] != b"\x30" and b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data if data[:1] == b"\x30" else data.strip())]


def load_certificate(data: bytes) -> x509.Certificate:
    """The first certificate of PEM or DER data (see load_certificates)."""
    return load_certificates(data)[0]


def end_entity(certificates: Sequence[x509.Certificate]) -> x509.Certificate:
    """The one certificate of a chain that is not a CA; raises ValueError unless exactly one."""
    leaves = [c for c in certificates if not _is_ca(c)]
    if len(leaves) != 1:
        raise ValueError(f"expected one end-entity certificate, found {len(leaves)} "
                         f"among {len(certificates)}")
    return leaves[0]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def verify_leaf(
    data: bytes | x509.Certificate,
    *,
    issuers: Sequence[x509.Certificate],
    trust_domain: str,
    now: datetime,
    revoked_serials: Collection[int] = (),
    expected: Identity | None = None,
    signature_verified: bool = False,
) -> Verdict:
    """Check issuer, signature, validity, revocation, clientAuth usage and identity in turn.

    *issuers* are the issuing CAs in use (more than one while a rotation overlaps). With
    *signature_verified* the caller vouches that the TLS handshake has already checked the
    chain to one of them (the broker's CERT_REQUIRED listener): the signature is not verified
    a second time; everything else still is.
    """
    try:
        cert = data if isinstance(data, x509.Certificate) else load_certificate(data)
    except ValueError as exc:
        return Verdict(Reason.MALFORMED, f"not a certificate: {exc}")
    problem = (issuer_problem(cert, issuers, signature_verified=signature_verified)
               or validity_problem(cert, now))
    if problem is not None:
        return Verdict(*problem)
    if cert.serial_number in revoked_serials:
        return Verdict(Reason.REVOKED, f"serial {format(cert.serial_number, 'x')} is revoked")
    usage = usage_problem(cert)
    if usage:
        return Verdict(Reason.WRONG_KEY_USAGE, usage)
    try:
        identity = identity_from_certificate(cert, trust_domain)
    except IdentityError as exc:
        return Verdict(Reason.IDENTITY_MISMATCH, str(exc))
    if expected is not None and identity != expected:
        return Verdict(Reason.IDENTITY_MISMATCH, f"certificate is for {identity}, not {expected}",
                       identity)
    return Verdict(Reason.OK, f"valid certificate for {identity}", identity)


def issuer_problem(cert: x509.Certificate, issuers: Sequence[x509.Certificate], *,
                   signature_verified: bool = False) -> tuple[Reason, str] | None:
    """Why *cert* was not issued by one of *issuers* (name, key identifier and signature),
    or None."""
    named = [issuer for issuer in issuers if issuer.subject == cert.issuer]
    if not named:
        expected = " or ".join(issuer.subject.rfc4514_string() for issuer in issuers)
        return Reason.UNKNOWN_ISSUER, (f"issued by {cert.issuer.rfc4514_string()}, "
                                       f"not by {expected or 'a fleet issuing CA'}")
    if signature_verified:
        return None
    # RFC 5280 4.2.1.1: the authority key identifier tells apart CAs of the same name.
    wanted = authority_key_id(cert)
    keyed = [issuer for issuer in named if wanted in _key_ids(issuer)]
    error: Exception | None = None
    for issuer in keyed or named:
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError) as exc:
            error = exc
        else:
            return None
    return Reason.UNKNOWN_ISSUER, (f"signature does not verify with the fleet CA: "
                                   f"{error or 'invalid signature'}")


def authority_key_id(cert: x509.Certificate) -> str | None:
    """The key identifier of *cert*'s authority key identifier extension (hex), if any."""
    try:
        value = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return value.key_identifier.hex() if value.key_identifier is not None else None


def key_identifier(public_key: CertificatePublicKeyTypes) -> str:
    """The key identifier Fleet writes into the certificates a CA with *public_key* issues
    (RFC 5280 4.2.1.2 method 1, SHA-1 of the subjectPublicKey), hex."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()


def _key_ids(ca: x509.Certificate) -> set[str]:
    ids = {key_identifier(ca.public_key())}
    with contextlib.suppress(x509.ExtensionNotFound):
        ids.add(ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                .digest.hex())
    return ids


def validity_problem(cert: x509.Certificate, now: datetime) -> tuple[Reason, str] | None:
    """Why *cert* is not valid at *now* (notBefore, notAfter), or None."""
    serial = format(cert.serial_number, "x")
    if now < cert.not_valid_before_utc:
        return Reason.NOT_YET_VALID, (f"serial {serial} is valid only from "
                                      f"{cert.not_valid_before_utc.isoformat()}")
    if now >= cert.not_valid_after_utc:
        return Reason.EXPIRED, f"serial {serial} expired at {cert.not_valid_after_utc.isoformat()}"
    return None


def usage_problem(cert: x509.Certificate, *, eku_required: bool = True) -> str | None:
    """Why *cert* is not a client certificate (CA flag, extended and key usage), or None.

    Without *eku_required* a certificate with no extendedKeyUsage passes (RFC 5280 4.2.1.12:
    any purpose), as IEEE 802.1AR IDevIDs often have none."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            return "certificate is a CA, not a client certificate"
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            return "certificate is not valid for clientAuth"
    except x509.ExtensionNotFound:
        if eku_required:
            return "certificate has no extended key usage; clientAuth is required"
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            return "certificate key usage lacks digitalSignature"
    except x509.ExtensionNotFound:
        pass
    return None


def spki_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: the key's identity across certificates."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the DER encoding."""


    return cert.fingerprint(hashes.SHA256()).hex()


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()
