"""CSR decoding (PEM, DER, base64 of DER as RFC 8951 allows) and proof of possession."""

from __future__ import annotations

import base64
import contextlib
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet import pki
from fleet.errors import CSRError
from fleet.pki.csr import MAX_CSR_BYTES

from .x509_factory import cached_key, der, make_ca, make_csr, new_key, pem, replace_once, resign

CSR = make_csr("dev-1")
DER = der(CSR)
B64 = base64.b64encode(DER)


def wrapped(width: int, newline: bytes) -> bytes:
    lines = textwrap.wrap(B64.decode(), width)
    return newline.join(line.encode() for line in lines) + newline


def spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def big_csr() -> x509.CertificateSigningRequest:
    """A validly signed CSR whose DER is larger than MAX_CSR_BYTES."""
    names = [x509.UniformResourceIdentifier(f"https://example.com/{i:05d}/" + "x" * 40)
             for i in range(MAX_CSR_BYTES // 40)]
    return make_csr("dev-1", general_names=names)


ACCEPTED: list[object] = [
    pytest.param(pem(CSR), id="ok/pem"),
    pytest.param(pem(CSR).replace(b"\n", b"\r\n"), id="ok/pem-crlf"),
    pytest.param(b"\n  " + pem(CSR) + b"\n\n", id="ok/pem-surrounding-whitespace"),
    pytest.param(pem(CSR).replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"),
                 id="ok/pem-new-certificate-request-header"),
    pytest.param(DER, id="ok/der"),
    pytest.param(B64, id="ok/base64-one-line"),
    pytest.param(B64 + b"\r\n", id="ok/base64-trailing-crlf"),
    pytest.param(wrapped(76, b"\r\n"), id="ok/base64-76-columns-crlf"),
    pytest.param(wrapped(64, b"\n"), id="ok/base64-64-columns-lf"),
    pytest.param(b" \t".join(B64[i:i + 10] for i in range(0, len(B64), 10)),
                 id="ok/base64-spaces-and-tabs"),
    pytest.param(b"\r".join(B64[i:i + 3] for i in range(0, len(B64), 3)),
                 id="ok/base64-bare-cr"),
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_load_csr_accepts(body: bytes) -> None:
    assert der(pki.load_csr(body)) == DER


def test_load_csr_accepts_der_ending_in_a_whitespace_byte() -> None:
    # DER may end in 0x0a or 0x20; stripping the body as text would break the signature.
    for i in range(5000):
        data = der(make_csr(f"dev-{i}"))
        if data[-1:].isspace():
            break
    else:
        pytest.fail("no CSR ending in a whitespace byte in 5000 tries")
    assert der(pki.load_csr(data)) == data


def tampered_subject() -> bytes:
    """The CSR with one byte of its subject changed: still parses, signature no longer fits."""
    return replace_once(DER, b"dev-1", b"dev-2")


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


REFUSED: list[object] = [
    pytest.param(b"", "empty", id="fail/empty"),
    pytest.param(b" \r\n\t ", "empty", id="fail/whitespace-only"),
    pytest.param(b"hello, I am a device", "base64", id="fail/garbage-text"),
    pytest.param(bytes(range(256)), None, id="fail/garbage-binary"),
    pytest.param(b"\x30\x82\xff\xff" + b"\x00" * 40, "malformed DER", id="fail/garbage-der-header"),
    pytest.param(base64.b64encode(b"not a CSR at all"), "malformed", id="fail/base64-of-garbage"),
    pytest.param(B64[:-3] + b"!!=", "base64", id="fail/base64-bad-alphabet"),
    pytest.param(B64[:-1], "base64", id="fail/base64-bad-padding"),
    pytest.param(truncated(DER), "malformed DER", id="fail/truncated-der"),
    pytest.param(truncated(pem(CSR)), None, id="fail/truncated-pem"),
    pytest.param(base64.b64encode(truncated(DER)), "malformed", id="fail/truncated-base64-der"),
    pytest.param(DER + b"\x00\x01", "malformed DER", id="fail/der-trailing-bytes"),
    pytest.param(b"A" * (MAX_CSR_BYTES * 2 + 4), "larger", id="fail/oversized-body"),
    pytest.param(base64.b64encode(der(big_csr())), "larger", id="fail/oversized-base64-der"),
    pytest.param(der(big_csr()), "larger", id="fail/oversized-der"),
    pytest.param(pem(big_csr()), "larger", id="fail/oversized-pem"),
    pytest.param(tampered_subject(), "signature", id="fail/tampered-subject-der"),
    pytest.param(base64.b64encode(tampered_subject()), "signature",
                 id="fail/tampered-subject-base64"),
]


@pytest.mark.parametrize(("body", "message"), REFUSED)
def test_load_csr_refuses(body: bytes, message: str | None) -> None:
    with pytest.raises(CSRError, match=message):
        pki.load_csr(body)


def test_tampered_csr_still_parses_but_fails_proof_of_possession() -> None:
    parsed = x509.load_der_x509_csr(tampered_subject())
    assert parsed.subject.rfc4514_string() == "CN=dev-2"
    assert not parsed.is_signature_valid
    with pytest.raises(CSRError, match="proof of possession"):
        pki.load_csr(tampered_subject())


def test_swapped_public_key_fails_proof_of_possession() -> None:
    forged = replace_once(DER, spki(CSR.public_key()), spki(new_key().public_key()))
    with pytest.raises(CSRError, match="proof of possession"):
        pki.load_csr(forged)


def test_certificate_is_not_a_csr() -> None:
    cert = make_ca(now=datetime.now(UTC)).root
    for body in (pem(cert), der(cert), base64.b64encode(der(cert))):
        with pytest.raises(CSRError):
            pki.load_csr(body)


def test_validly_signed_csr_with_duplicate_extension_is_a_csr_error() -> None:
    """Malformed content under a valid signature must still be a CSRError, not a crash."""
    key = cached_key("p256")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = make_csr("dev-1", key=key, uris=["spiffe://fleet.local/device/dev-1"],
                   extensions=[x509.IssuerAlternativeName(
                       [x509.UniformResourceIdentifier("spiffe://fleet.local/device/dev-9")])])
    # IssuerAltName (2.5.29.18) becomes a second SubjectAltName (2.5.29.17).
    tbs = replace_once(csr.tbs_certrequest_bytes, b"\x06\x03\x55\x1d\x12", b"\x06\x03\x55\x1d\x11")
    with pytest.raises(CSRError, match="extension"):
        pki.inspect_csr(pki.load_csr(resign(tbs, key)))


@given(cuts=st.lists(st.tuples(st.integers(min_value=0, max_value=len(B64)),
                               st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b"\t"])),
                     max_size=40))
@settings(max_examples=60, deadline=None)
def test_base64_whitespace_anywhere_is_tolerated(cuts: list[tuple[int, bytes]]) -> None:
    body = bytearray(B64)
    for position, whitespace in sorted(cuts, reverse=True):
        body[position:position] = whitespace
    assert pki.decode_base64(bytes(body)) == DER
    assert der(pki.load_csr(bytes(body))) == DER


@given(noise=st.binary(min_size=1, max_size=300))
@settings(max_examples=100, deadline=None)
def test_arbitrary_bytes_raise_only_csr_error(noise: bytes) -> None:
    with contextlib.suppress(CSRError):
        pki.load_csr(noise)


MUTATIONS: list[object] = [
    pytest.param(lambda d: d[:-1], id="drop-last-byte"),
    pytest.param(lambda d: d[1:], id="drop-first-byte"),
    pytest.param(lambda d: d[:1] + bytes([d[1] ^ 0x01]) + d[2:], id="flip-outer-length-bit"),
    pytest.param(lambda d: d[:-5] + bytes([d[-5] ^ 0x01]) + d[-4:], id="flip-signature-bit"),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_mutated_der_is_refused(mutate: Callable[[bytes], bytes]) -> None:
    with pytest.raises(CSRError):
        pki.load_csr(mutate(DER))
