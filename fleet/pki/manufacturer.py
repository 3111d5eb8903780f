"""Manufacturer certificates (IEEE 802.1AR IDevIDs): the vendor CAs that issue them, their
verification, the device id they carry and the channel binding of a CSR (RFC 7030 3.5).

Nothing here knows about the registry: a vendor is its CA certificates and its policy.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AttributeOID, NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from fleet.errors import (
    AuthenticationError,
    ForbiddenError,
    ManufacturerCertificateError,
    PKIError,
)
from fleet.pki.identity import DEVICE_ID_PATTERN, common_names, uri_sans
from fleet.pki.verify import usage_problem, validity_problem

DeviceIdField = Literal["cn", "serialNumber", "san-uri"]
DEVICE_ID_FIELDS: tuple[DeviceIdField, ...] = ("cn", "serialNumber", "san-uri")
SIGNING_KEYS = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey,
                ed448.Ed448PublicKey, dsa.DSAPublicKey)
MAX_CHAIN_DEPTH = 4
"""Intermediates a vendor's chain may hold between its root and a device certificate."""


def check_vendor_cas(certificates: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """*certificates* unchanged when each is a CA certificate (basicConstraints CA=true,
    keyUsage keyCertSign) and each is its own issuer or issued by another of them, so the
    set ends in a root; PKIError otherwise."""
    if not certificates:
        raise PKIError("no CA certificate given")
    for cert in certificates:
        subject = cert.subject.rfc4514_string()
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            raise PKIError(f"{subject} is not a CA certificate: basicConstraints and keyUsage "
                           "are required") from None
        if not constraints.ca:
            raise PKIError(f"{subject} is not a CA certificate (basicConstraints CA=false)")
        if not usage.key_cert_sign:
            raise PKIError(f"{subject} is not a CA certificate (keyUsage lacks keyCertSign)")
        if _issuer_among(cert, certificates) is None:
            raise PKIError(f"{subject} is issued by {cert.issuer.rfc4514_string()}, which is "
                           "not in the file: give the vendor's root and its intermediates")
    return list(certificates)


def _issuer_among(cert: x509.Certificate,
                  candidates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for issuer in candidates:
        if issuer.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return issuer
    return None


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def issuer_named(cert: x509.Certificate,
                 cas: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The CA of *cas* whose subject is *cert*'s issuer (the candidate that issued it)."""
    return next((ca for ca in cas if ca.subject == cert.issuer), None)


def verify_manufacturer_certificate(cert: x509.Certificate, *, cas: Sequence[x509.Certificate],
                                    vendor: str, now: datetime) -> x509.Certificate:
    """Check *cert* at *now* against the vendor's CAs: validity, the path (RFC 5280, with
    cryptography's verifier: signatures, the CAs' constraints and key usage), and that it is
    a device certificate (not a CA; keyUsage digitalSignature and extendedKeyUsage
    clientAuth where present). Returns the CA that issued it; raises
    ManufacturerCertificateError naming what failed."""
    serial = format(cert.serial_number, "x")
    problem = validity_problem(cert, now)
    if problem is not None:
        raise ManufacturerCertificateError(f"manufacturer certificate {problem[1]}",
                                           vendor=vendor, verdict=problem[0].value)
    usage = usage_problem(cert, eku_required=False)
    if usage is not None:
        raise ManufacturerCertificateError(f"manufacturer certificate {serial}: {usage}",
                                           vendor=vendor, verdict="wrong-key-usage")
    roots = [ca for ca in cas if _self_issued(ca)]
    verifier = (PolicyBuilder().store(Store(roots)).time(now).max_chain_depth(MAX_CHAIN_DEPTH)
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                    ee_policy=ExtensionPolicy.permit_all())
                .build_client_verifier())
    try:
        verified = verifier.verify(cert, [ca for ca in cas if not _self_issued(ca)])
    except VerificationError as exc:
        raise ManufacturerCertificateError(
            f"manufacturer certificate {serial} does not chain to vendor {vendor}'s CA: {exc}",
            vendor=vendor, verdict="chain") from None
    return verified.chain[1]


def crl_problem(cert: x509.Certificate, *, crl: x509.CertificateRevocationList,
                issuer: x509.Certificate, vendor: str, now: datetime) -> None:
    """Raise ManufacturerCertificateError when the vendor's CRL lists *cert*, or cannot be
    relied on for it: not *issuer*'s, badly signed or past its nextUpdate (fail closed)."""
    if not crl_signed_by(crl, issuer):
        raise ManufacturerCertificateError(
            f"vendor {vendor}'s CRL is not signed by {issuer.subject.rfc4514_string()}, "
            "which issued the manufacturer certificate", vendor=vendor, verdict="crl")
    next_update = crl.next_update_utc
    if next_update is not None and next_update <= now:
        raise ManufacturerCertificateError(
            f"vendor {vendor}'s CRL is out of date (nextUpdate {next_update.isoformat()})",
            vendor=vendor, verdict="crl")
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise ManufacturerCertificateError(
            f"manufacturer certificate {format(cert.serial_number, 'x')} is revoked by "
            f"vendor {vendor}", vendor=vendor, verdict="revoked")


def crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    """*crl* is *ca*'s: issued under its name and signed with its key."""
    key = ca.public_key()
    if not isinstance(key, SIGNING_KEYS) or crl.issuer != ca.subject:
        return False
    return crl.is_signature_valid(key)


def manufacturer_device_id(cert: x509.Certificate, field: DeviceIdField, *,
                           vendor: str) -> str:
    """The device id *field* of *cert* names: the subject's one CN or serialNumber, or the
    last segment (after the last ``/`` or ``:``) of its one URI subjectAltName. It must be a
    valid device id; ForbiddenError otherwise (the certificate cannot name a device)."""
    values: list[str]
    if field == "cn":
        values = common_names(cert.subject)
    elif field == "serialNumber":
        values = [str(a.value) for a in cert.subject.get_attributes_for_oid(
            NameOID.SERIAL_NUMBER)]
    else:
        try:
            extensions = cert.extensions
        except ValueError as exc:
            raise ForbiddenError(f"manufacturer certificate extensions unreadable: {exc}",
                                 vendor=vendor) from None
        values = [uri.replace(":", "/").rstrip("/").rsplit("/", 1)[-1]
                  for uri in uri_sans(extensions)]
    if len(values) != 1:
        raise ForbiddenError(
            f"vendor {vendor} takes the device id from the manufacturer certificate's {field}, "
            f"which it holds {len(values)} times (exactly one is needed)",
            vendor=vendor, field=field)
    device_id = values[0]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise ForbiddenError(
            f"the manufacturer certificate's {field} {device_id[:80]!r} is not a valid device "
            "id (a letter or digit, then up to 63 letters, digits, '.', '_' or '-')",
            vendor=vendor, field=field)
    return device_id


def challenge_password(csr: x509.CertificateSigningRequest) -> bytes | None:
    """The CSR's challengePassword attribute (RFC 2985 5.4.1), if it carries one."""
    try:
        return csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        return None


def check_channel_binding(csr: x509.CertificateSigningRequest, *, tls_unique: bytes | None,
                          required: bool, vendor: str) -> bool:
    """RFC 7030 3.5: a challengePassword must be the base64 tls-unique of the TLS session the
    CSR arrives on; *required* refuses a CSR without one. *tls_unique* is None when the
    session has none (TLS 1.3 defines no tls-unique): then a CSR binding to it is refused.
    True when the CSR was bound."""
    presented = challenge_password(csr)
    if presented is None:
        if required:
            raise AuthenticationError(
                f"vendor {vendor} requires channel binding: put the TLS session's tls-unique "
                "(base64) in the CSR's challengePassword, over TLS 1.2", vendor=vendor)
        return False
    if tls_unique is None:
        raise AuthenticationError(
            "the CSR's challengePassword binds it to the TLS session, but this session has no "
            "tls-unique (TLS 1.3): enroll over TLS 1.2 to bind", vendor=vendor)
    if not hmac.compare_digest(presented.strip(), base64.b64encode(tls_unique)):
        raise AuthenticationError("the CSR's challengePassword is not this TLS session's "
                                  "tls-unique: the CSR was made for another session",
                                  vendor=vendor)
    return True
