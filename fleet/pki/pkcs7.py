"""PKCS#7 certs-only ("degenerate" SignedData) encoding as EST uses it (RFC 7030 4.1.3)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from fleet.errors import PKIError


def certs_only(certificates: Sequence[x509.Certificate]) -> bytes:
    """DER of a certs-only PKCS#7; the SET OF is DER-sorted, so order carries no meaning."""
    if not certificates:
        raise PKIError("a certs-only PKCS#7 needs at least one certificate")
    return pkcs7.serialize_certificates(list(certificates), Encoding.DER)


def load_certs_only(der: bytes) -> list[x509.Certificate]:
    """The certificates inside a certs-only PKCS#7 (DER)."""
    try:
        return pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as exc:
        raise PKIError(f"malformed PKCS#7: {exc}") from exc
