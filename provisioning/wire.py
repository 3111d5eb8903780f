"""EST message bodies (RFC 7030 section 4, clarified by RFC 8951 section 3).

Every request and response body is base64 of DER whatever the Content-Transfer-Encoding
header says; responses still carry ``Content-Transfer-Encoding: base64`` because older clients
insist on it.
"""

from __future__ import annotations

import base64

from cryptography import x509

from fleet import pki
from fleet.errors import CSRError, FleetError

PKCS10 = "application/pkcs10"
PKCS7_MIME = "application/pkcs7-mime"
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
CSRATTRS = "application/csrattrs"
PKIX_CRL = "application/pkix-crl"
TEXT = "text/plain; charset=utf-8"

_LINE = 64  # column width of base64 bodies; `openssl base64 -d` reads no longer lines
_PEM_CSR = b"-----BEGIN"


class UnsupportedMediaTypeError(FleetError):
    """The request body is not of the media type the operation takes (HTTP 415)."""


def check_media_type(header: str | None, expected: str = PKCS10) -> None:
    """Refuse a body whose Content-Type header (parameters aside) is not *expected*."""
    media_type = (header or "").split(";", 1)[0].strip().lower()
    if media_type != expected:
        shown = media_type[:60] or "none"
        raise UnsupportedMediaTypeError(f"Content-Type must be {expected}, got {shown}",
                                        content_type=shown)


def decode_csr_body(body: bytes) -> bytes:
    """The CSR a simple(re)enroll body carries: base64 of DER, whitespace anywhere.

    A PEM body is passed through unchanged (the CSR loader reads PEM as well).
    """
    if body.lstrip().startswith(_PEM_CSR):
        return body
    der = pki.decode_base64(body)
    if not der:
        raise CSRError("request body is empty: send base64 of a DER PKCS#10 request")
    if der[:1] != b"\x30":
        raise CSRError("request body is not base64 of a DER PKCS#10 request")
    return der


def encode_body(der: bytes) -> bytes:
    """Base64 of *der* in CRLF-terminated lines of 64 characters."""
    text = base64.b64encode(der)
    return b"".join(text[i:i + _LINE] + b"\r\n" for i in range(0, len(text), _LINE))


def base64_headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Content-Transfer-Encoding": "base64"}


def certs_only_body(certificates: list[x509.Certificate]) -> bytes:
    """The base64 body of a certs-only PKCS#7 holding *certificates*."""
    return encode_body(pki.certs_only(certificates))


# -- csrattrs (RFC 7030 section 4.5.2) ------------------------------------------------------
# CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
# AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }
ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
SECP256R1 = "1.2.840.10045.3.1.7"


def csr_attributes() -> bytes:
    """DER CsrAttrs: sign with ecdsa-with-SHA256, and an EC key on P-256 is preferred."""
    ec_key = _tlv(0x30, _oid(ID_EC_PUBLIC_KEY) + _tlv(0x31, _oid(SECP256R1)))
    return _tlv(0x30, _oid(ECDSA_WITH_SHA256) + ec_key)


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        encoded = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(encoded)]) + encoded
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))
