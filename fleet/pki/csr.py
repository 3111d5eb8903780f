"""Certificate signing requests: decoding, proof of possession and what they ask for."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleet.errors import CSRError, IdentityError, ProfileError
from fleet.pki.identity import Identity, common_names, uri_sans
from fleet.pki.keys import check_key_policy

MAX_CSR_BYTES = 16 * 1024
_WHITESPACE = re.compile(rb"[\s]+")
_PEM_HEADER = b"-----BEGIN CERTIFICATE REQUEST-----"
_PEM_HEADER_NEW = b"-----BEGIN NEW CERTIFICATE REQUEST-----"


def decode_base64(data: bytes) -> bytes:
    """Decode base64 tolerating CR, LF, space and tab anywhere (RFC 8951 section 3)."""
    compact = _WHITESPACE.sub(b"", data)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CSRError(f"body is not valid base64: {exc}") from exc


def _decode(data: bytes) -> x509.CertificateSigningRequest:
    # DER is tried on the raw bytes first: stripping could eat a trailing 0x20/0x0a of DER.
    der_error: ValueError | None = None
    if data[:1] == b"\x30":
        try:
            return x509.load_der_x509_csr(data)
        except ValueError as exc:
            der_error = exc  # a base64 body may also start with "0"
    stripped = data.strip()
    if stripped.startswith((_PEM_HEADER, _PEM_HEADER_NEW)):
        return x509.load_pem_x509_csr(stripped.replace(b"NEW CERTIFICATE", b"CERTIFICATE"))
    try:
        der = decode_base64(stripped)
    except CSRError:
        if der_error is not None:  # it looked like DER and is not base64: report the DER error
            raise CSRError(f"malformed DER CSR: {der_error}") from der_error
        raise
    return x509.load_der_x509_csr(der)


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Decode a CSR given as PEM, DER, or base64 of DER; check its size and signature."""
    if len(data) > MAX_CSR_BYTES * 2:
        raise CSRError(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    if not data.strip():
        raise CSRError("CSR is empty")
    try:
        csr = _decode(data)
    except CSRError:
        raise
    except ValueError as exc:
        raise CSRError(f"malformed CSR: {exc}") from exc
    if len(csr.public_bytes(Encoding.DER)) > MAX_CSR_BYTES:
        raise CSRError(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        signed = csr.is_signature_valid
    except Exception as exc:  # unsupported signature algorithms raise here
        raise CSRError(f"CSR signature cannot be checked: {exc}") from exc
    if not signed:
        raise CSRError("CSR signature is invalid (no proof of possession of the key)")
    try:  # parsed lazily by cryptography: fail here, as a CSRError, not later in a policy check
        csr.subject.rfc4514_string()
        csr.extensions  # noqa: B018
        csr.public_key()
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
            UnsupportedAlgorithm) as exc:
        raise CSRError(f"malformed CSR content: {exc}") from exc
    return csr


@dataclass(frozen=True, slots=True)
class CSRRequest:
    """What a verified CSR asks for, reduced to the facts the authority decides on."""

    csr: x509.CertificateSigningRequest
    common_name: str
    uris: tuple[str, ...]
    key_name: str


def inspect_csr(csr: x509.CertificateSigningRequest) -> CSRRequest:
    """Check the key policy and refuse CSRs that ask for more than a device may have."""
    key_name = check_key_policy(csr.public_key())
    cns = common_names(csr.subject)
    if len(cns) != 1:
        raise IdentityError(f"CSR subject must contain exactly one CN, found {len(cns)}")
    refuse_requested_extensions(csr)
    return CSRRequest(csr=csr, common_name=cns[0], uris=tuple(uri_sans(csr.extensions)),
                      key_name=key_name)


def refuse_requested_extensions(csr: x509.CertificateSigningRequest) -> None:
    """The server decides the profile: a CSR asking for CA powers or server use is refused."""
    for ext in csr.extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise ProfileError("CSR requests CA:true; device certificates are never CAs")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise ProfileError("CSR requests keyCertSign/cRLSign key usage")
        if isinstance(value, x509.ExtendedKeyUsage):
            extra = [u for u in value if u != ExtendedKeyUsageOID.CLIENT_AUTH]
            if extra:
                names = ", ".join(getattr(u, "_name", u.dotted_string) for u in extra)
                raise ProfileError(f"CSR requests extended key usage {names}; only clientAuth")
        if isinstance(value, x509.SubjectAlternativeName):
            others = [n for n in value if not isinstance(n, x509.UniformResourceIdentifier)]
            if others or len(value) > 1:
                raise ProfileError(
                    "CSR requests extra subject alternative names; only the identity's own "
                    "SPIFFE URI may be named"
                )


def check_requested_identity(request: CSRRequest, identity: Identity, trust_domain: str) -> None:
    """The CSR must name *identity* and nobody else (CN, and URI SAN if present)."""
    if request.common_name != identity.name:
        raise IdentityError(
            f"CSR names CN={request.common_name!r} but the credential is for {identity.name!r}",
            device_id=identity.name,
        )
    expected = identity.spiffe_uri(trust_domain)
    if request.uris and request.uris != (expected,):
        raise IdentityError(
            f"CSR names URI {', '.join(request.uris)} but the credential is for {expected}",
            device_id=identity.name,
        )


def same_subject_and_san(
    csr: x509.CertificateSigningRequest, cert: x509.Certificate
) -> bool:
    """RFC 7030 4.2.2: a re-enrollment names the same Subject and SAN as the current certificate.

    The CN must be equal; attributes the server added to the subject (the configured O) may be
    left out of the CSR, since the server decides the profile; any attribute the CSR does carry
    must be in the certificate, and a URI SAN, if present, must be the certificate's.
    """
    csr_cns = common_names(csr.subject)
    if not csr_cns or csr_cns != common_names(cert.subject):
        return False
    cert_attributes = set(cert.subject)
    if any(attribute not in cert_attributes for attribute in csr.subject):
        return False
    csr_uris = uri_sans(csr.extensions)
    return not csr_uris or csr_uris == uri_sans(cert.extensions)
