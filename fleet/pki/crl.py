"""Certificate revocation lists (RFC 5280 section 5)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.errors import PKIError
from fleet.pki.issue import signature_hash
from fleet.pki.keys import PrivateKey

REASON_CODES: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
"""RFC 5280 5.3.1 reason codes by their ASN.1 names (removeFromCRL is not a revocation)."""


def check_reason(reason: str) -> str:
    """Return *reason* if it is an RFC 5280 revocation reason name, else raise PKIError."""
    if reason not in REASON_CODES:
        raise PKIError(
            f"unknown revocation reason {reason!r}; use one of {', '.join(REASON_CODES)}",
            reason=reason,
        )
    return reason


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    serial_number: int
    revoked_at: datetime
    reason: str


def build_crl(
    *,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: Iterable[RevokedEntry],
    crl_number: int,
    now: datetime,
    next_update: timedelta,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing *revoked*; callers guarantee *crl_number* strictly increases."""
    if crl_number < 1:
        raise PKIError(f"CRL number must be positive, got {crl_number}")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    for entry in revoked:
        revoked_cert = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial_number)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason != "unspecified":
            revoked_cert = revoked_cert.add_extension(
                x509.CRLReason(REASON_CODES[check_reason(entry.reason)]), critical=False
            )
        builder = builder.add_revoked_certificate(revoked_cert.build())
    return builder.sign(issuer_key, signature_hash(issuer_key))


def crls_pem(crls: Iterable[x509.CertificateRevocationList]) -> bytes:
    """Several CRLs as one PEM file, one block each (what OpenSSL's CRL files hold)."""
    return b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
