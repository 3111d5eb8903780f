"""CRLs (RFC 5280 section 5) and certs-only PKCS#7 (RFC 7030 4.1.3)."""

from __future__ import annotations

import itertools
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet import pki
from fleet.errors import PKIError

from .x509_factory import make_ca

NOW = datetime.now(UTC).replace(microsecond=0)
CA = make_ca(now=NOW)
OTHER = make_ca(now=NOW, name="Test")  # same subject names, other keys


def crl(entries: list[pki.RevokedEntry], number: int = 1) -> x509.CertificateRevocationList:
    return pki.build_crl(issuer=CA.issuing, issuer_key=CA.issuing_key, revoked=entries,
                         crl_number=number, now=NOW, next_update=timedelta(hours=24))


def test_crl_is_signed_by_the_issuing_ca_only() -> None:
    built = crl([])
    assert built.issuer == CA.issuing.subject
    assert built.is_signature_valid(CA.issuing.public_key())  # type: ignore[arg-type]
    assert not built.is_signature_valid(OTHER.issuing.public_key())  # type: ignore[arg-type]
    assert not built.is_signature_valid(CA.root.public_key())  # type: ignore[arg-type]


def test_crl_times_number_and_authority_key_identifier() -> None:
    built = crl([], number=42)
    assert built.last_update_utc == NOW
    assert built.next_update_utc == NOW + timedelta(hours=24)
    assert built.extensions.get_extension_for_class(x509.CRLNumber).value == x509.CRLNumber(42)
    aki = built.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = CA.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


@pytest.mark.parametrize("number", [0, -1])
def test_crl_number_must_be_positive(number: int) -> None:
    with pytest.raises(PKIError, match="CRL number"):
        crl([], number=number)


def test_crl_lists_every_entry_with_its_date() -> None:
    entries = [pki.RevokedEntry(serial, NOW - timedelta(minutes=i), "keyCompromise")
               for i, serial in enumerate((1, 2, 0xDEADBEEF, 2**158 + 7))]
    built = crl(entries)
    assert len(built) == 4
    for entry in entries:
        revoked = built.get_revoked_certificate_by_serial_number(entry.serial_number)
        assert revoked is not None
        assert revoked.revocation_date_utc == entry.revoked_at
    assert built.get_revoked_certificate_by_serial_number(3) is None


@pytest.mark.parametrize("reason", sorted(pki.REASON_CODES))
def test_crl_reason_codes(reason: str) -> None:
    built = crl([pki.RevokedEntry(7, NOW, reason)])
    revoked = built.get_revoked_certificate_by_serial_number(7)
    assert revoked is not None
    if reason == "unspecified":  # RFC 5280 5.3.1: omit rather than encode unspecified
        with pytest.raises(x509.ExtensionNotFound):
            revoked.extensions.get_extension_for_class(x509.CRLReason)
    else:
        value = revoked.extensions.get_extension_for_class(x509.CRLReason).value
        assert value.reason == pki.REASON_CODES[reason]


@pytest.mark.parametrize("reason", ["removeFromCRL", "compromised", "", "KEYCOMPROMISE"])
def test_unknown_reason_is_refused(reason: str) -> None:
    with pytest.raises(PKIError, match="unknown revocation reason"):
        pki.check_reason(reason)
    with pytest.raises(PKIError, match="unknown revocation reason"):
        crl([pki.RevokedEntry(7, NOW, reason)])


def test_openssl_accepts_the_crl(tmp_path: Path) -> None:
    (tmp_path / "crl.pem").write_bytes(
        crl([pki.RevokedEntry(0xABCDEF, NOW, "keyCompromise")], number=5)
        .public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.pem").write_bytes(
        CA.issuing.public_bytes(serialization.Encoding.PEM)
        + CA.root.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        ["openssl", "crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout", "-text"],
        cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "verify OK" in result.stderr + result.stdout
    assert "ABCDEF" in result.stdout
    assert "Key Compromise" in result.stdout


# -- PKCS#7 certs-only ------------------------------------------------------------------------

LEAVES = [CA.issue(f"dev-{i}", now=NOW) for i in range(3)]
CERTS = [CA.issuing, CA.root, *LEAVES]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_certs_only_roundtrip_holds_exactly_the_given_certificates(count: int) -> None:
    given = CERTS[:count]
    loaded = pki.load_certs_only(pki.certs_only(given))
    assert len(loaded) == count
    assert set(loaded) == set(given)


def test_certs_only_order_carries_no_meaning() -> None:
    encodings = {pki.certs_only(list(p)) for p in itertools.permutations(CERTS[:3])}
    assert len(encodings) == 1  # DER SET OF is sorted


def test_certs_only_needs_a_certificate() -> None:
    with pytest.raises(PKIError, match="at least one"):
        pki.certs_only([])


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x30\x03\x02\x01\x01"],
                         ids=["empty", "garbage", "not-pkcs7"])
def test_load_certs_only_refuses_garbage(data: bytes) -> None:
    with pytest.raises(PKIError, match="PKCS#7"):
        pki.load_certs_only(data)


def test_openssl_reads_certs_only(tmp_path: Path) -> None:
    (tmp_path / "p7.der").write_bytes(pki.certs_only([CA.issuing, CA.root]))
    result = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", "p7.der", "-print_certs", "-noout"],
        cwd=tmp_path, capture_output=True, text=True, check=True)
    subjects = [line for line in result.stdout.splitlines() if line.startswith("subject")]
    assert len(subjects) == 2
    assert any("Test Issuing CA" in s for s in subjects)
    assert any("Test Root CA" in s for s in subjects)
