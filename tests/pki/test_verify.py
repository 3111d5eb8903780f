"""verify_leaf: one test per reason a certificate is not acceptable."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet import pki
from fleet.pki import Identity, Reason

from .x509_factory import TRUST_DOMAIN, cached_key, der, make_ca, pem, spiffe

NOW = datetime.now(UTC).replace(microsecond=0)
CA = make_ca(now=NOW)
SAME_NAME_CA = make_ca(now=NOW)  # "Test Issuing CA" too, with its own keys
OTHER_CA = make_ca(now=NOW, name="Other")
GOOD = CA.issue("dev-1", now=NOW)
LIFETIME = timedelta(days=30)


def verify(cert: x509.Certificate | bytes, **kwargs: object) -> pki.Verdict:
    options: dict[str, object] = {"issuers": [CA.issuing], "trust_domain": TRUST_DOMAIN,
                                  "now": NOW}
    options.update(kwargs)
    return pki.verify_leaf(cert, **options)  # type: ignore[arg-type]


def profile(
    *, cn: str | None = "dev-1", uris: tuple[str, ...] = (spiffe("dev-1"),),
    eku: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
) -> pki.Profile:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    return pki.Profile(subject=name, lifetime=LIFETIME, extended_key_usages=eku,
                       subject_alternative_names=tuple(x509.UniformResourceIdentifier(u)
                                                       for u in uris))


def raw_leaf(*, key_usage: x509.KeyUsage | None, eku: bool = True) -> x509.Certificate:
    """A leaf built without fleet.pki, to get extension sets the profiles never produce."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
        .issuer_name(CA.issuing.subject)
        .public_key(cached_key("p256").public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + LIFETIME)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(spiffe("dev-1"))]), critical=False)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(CA.issuing_key, hashes.SHA256())


KEY_AGREEMENT_ONLY = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False)


@pytest.mark.parametrize("data", [
    pytest.param(GOOD, id="ok/object"),
    pytest.param(pem(GOOD), id="ok/pem"),
    pytest.param(der(GOOD), id="ok/der"),
    pytest.param(b"\n" + pem(GOOD) + b"\n", id="ok/pem-whitespace"),
])
def test_valid_device_certificate(data: x509.Certificate | bytes) -> None:
    verdict = verify(data)
    assert verdict.ok
    assert verdict.reason is Reason.OK
    assert verdict.identity == Identity("device", "dev-1")


def test_valid_service_certificate() -> None:
    verdict = verify(CA.issue(Identity("service", "telemetry"), now=NOW))
    assert verdict.ok
    assert verdict.identity == Identity("service", "telemetry")


def test_valid_with_expected_identity() -> None:
    assert verify(GOOD, expected=Identity("device", "dev-1")).ok


def test_valid_without_key_usage_extension() -> None:
    assert verify(raw_leaf(key_usage=None)).ok


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(b"garbage", id="garbage"),
    pytest.param(der(GOOD)[:-20], id="truncated-der"),
    pytest.param(pem(GOOD)[:200], id="truncated-pem"),
])
def test_malformed(data: bytes) -> None:
    verdict = verify(data)
    assert verdict.reason is Reason.MALFORMED
    assert not verdict.ok
    assert verdict.identity is None


@pytest.mark.parametrize("cert", [
    pytest.param(OTHER_CA.issue("dev-1", now=NOW), id="other-ca"),
    pytest.param(SAME_NAME_CA.issue("dev-1", now=NOW), id="other-ca-with-same-subject-name"),
    pytest.param(pki.issue_certificate(
        profile=profile(), public_key=cached_key("p256").public_key(), issuer_key=CA.root_key,
        issuer=CA.root, now=NOW), id="signed-by-the-root-directly"),
    pytest.param(pki.issue_certificate(
        profile=profile(), public_key=cached_key("p256").public_key(),
        issuer_key=cached_key("p256"), issuer=None, now=NOW), id="self-signed"),
])
def test_unknown_issuer(cert: x509.Certificate) -> None:
    verdict = verify(cert)
    assert verdict.reason is Reason.UNKNOWN_ISSUER
    assert verdict.identity is None


def test_unknown_issuer_with_same_name_says_signature() -> None:
    assert "signature" in verify(SAME_NAME_CA.issue("dev-1", now=NOW)).detail


@pytest.mark.parametrize(("now", "reason"), [
    pytest.param(NOW + LIFETIME, Reason.EXPIRED, id="fail/at-not-after"),
    pytest.param(NOW + LIFETIME + timedelta(days=1), Reason.EXPIRED, id="fail/after-not-after"),
    pytest.param(NOW + LIFETIME - timedelta(seconds=1), Reason.OK, id="ok/last-second"),
    pytest.param(NOW - timedelta(minutes=5), Reason.OK, id="ok/at-not-before"),
    pytest.param(NOW - timedelta(minutes=5, seconds=1), Reason.NOT_YET_VALID,
                 id="fail/before-not-before"),
    pytest.param(NOW - timedelta(days=1), Reason.NOT_YET_VALID, id="fail/a-day-early"),
])
def test_validity_period(now: datetime, reason: Reason) -> None:
    assert verify(GOOD, now=now).reason is reason


def test_revoked() -> None:
    verdict = verify(GOOD, revoked_serials={1, GOOD.serial_number})
    assert verdict.reason is Reason.REVOKED
    assert format(GOOD.serial_number, "x") in verdict.detail


def test_other_serial_revoked_is_fine() -> None:
    assert verify(GOOD, revoked_serials={GOOD.serial_number + 1}).ok


@pytest.mark.parametrize(("cert", "detail"), [
    pytest.param(CA.sign(profile(eku=(ExtendedKeyUsageOID.SERVER_AUTH,)), now=NOW),
                 "clientAuth", id="server-auth-only"),
    pytest.param(CA.sign(pki.server_profile(["dev-1"], lifetime=LIFETIME), now=NOW),
                 "clientAuth", id="server-certificate"),
    pytest.param(CA.sign(profile(eku=()), now=NOW), "no extended key usage", id="no-eku"),
    pytest.param(CA.sign(pki.ca_profile("dev-1", lifetime=LIFETIME, path_length=0), now=NOW),
                 "CA", id="ca-certificate"),
    pytest.param(raw_leaf(key_usage=KEY_AGREEMENT_ONLY), "digitalSignature",
                 id="key-usage-without-digital-signature"),
])
def test_wrong_key_usage(cert: x509.Certificate, detail: str) -> None:
    verdict = verify(cert)
    assert verdict.reason is Reason.WRONG_KEY_USAGE
    assert detail in verdict.detail


def test_usage_without_eku_required_passes_a_certificate_with_no_eku_only() -> None:
    """A manufacturer's IDevID may have no extendedKeyUsage; one that names a purpose must
    still name clientAuth, and the CA flag and keyUsage are checked as for fleet ones."""
    assert pki.usage_problem(CA.sign(profile(eku=()), now=NOW), eku_required=False) is None
    assert "clientAuth" in str(pki.usage_problem(
        CA.sign(profile(eku=(ExtendedKeyUsageOID.SERVER_AUTH,)), now=NOW), eku_required=False))
    assert "digitalSignature" in str(pki.usage_problem(
        raw_leaf(key_usage=KEY_AGREEMENT_ONLY, eku=False), eku_required=False))
    assert "CA" in str(pki.usage_problem(
        CA.sign(pki.ca_profile("dev-1", lifetime=LIFETIME, path_length=0), now=NOW),
        eku_required=False))


@pytest.mark.parametrize(("cert", "detail"), [
    pytest.param(CA.sign(profile(cn="dev-2"), now=NOW), "does not match", id="cn-vs-san-differ"),
    pytest.param(CA.sign(profile(cn=None), now=NOW), "does not match", id="no-cn"),
    pytest.param(CA.issue("dev-1", now=NOW, trust_domain="evil.example"), "trust domain",
                 id="wrong-trust-domain"),
    pytest.param(CA.sign(profile(uris=(spiffe("dev-1"), spiffe("dev-2"))), now=NOW),
                 "exactly one URI", id="two-uris"),
    pytest.param(CA.sign(profile(uris=()), now=NOW), "exactly one URI", id="no-uri"),
    pytest.param(CA.sign(profile(uris=("spiffe://fleet.local/user/dev-1",)), now=NOW),
                 "neither a device nor a service", id="unknown-kind"),
    pytest.param(CA.sign(profile(uris=("spiffe://fleet.local/device/dev-1/x",)), now=NOW),
                 "invalid device id", id="nested-path"),
])
def test_identity_mismatch(cert: x509.Certificate, detail: str) -> None:
    verdict = verify(cert)
    assert verdict.reason is Reason.IDENTITY_MISMATCH
    assert detail in verdict.detail


def test_identity_mismatch_with_expected_identity_reports_the_actual_one() -> None:
    verdict = verify(GOOD, expected=Identity("device", "dev-2"))
    assert verdict.reason is Reason.IDENTITY_MISMATCH
    assert verdict.identity == Identity("device", "dev-1")
    service = verify(CA.issue(Identity("service", "dev-1"), now=NOW),
                     expected=Identity("device", "dev-1"))
    assert service.reason is Reason.IDENTITY_MISMATCH


def test_issuer_is_checked_before_anything_else() -> None:
    expired_foreign = OTHER_CA.issue("dev-1", now=NOW - timedelta(days=60))
    verdict = verify(expired_foreign, revoked_serials={expired_foreign.serial_number})
    assert verdict.reason is Reason.UNKNOWN_ISSUER


def test_fingerprint_and_pem_helpers() -> None:
    assert pki.fingerprint_sha256(GOOD) == hashlib.sha256(der(GOOD)).hexdigest()
    assert pki.load_certificate(pki.certificate_pem(GOOD).encode()) == GOOD
    assert pki.load_certificate(der(GOOD)) == GOOD
    with pytest.raises(ValueError, match=r"asn1|parse"):
        pki.load_certificate(b"nope")


def test_der_ending_in_a_whitespace_byte_is_loaded_whole() -> None:
    # The last byte of a DER certificate is signature data; any of 0x09-0x0d and 0x20 occurs.
    for i in range(5000):
        cert = CA.issue(f"dev-{i}", now=NOW)
        data = der(cert)
        if data[-1:].isspace():
            break
    else:
        pytest.fail("no certificate ending in a whitespace byte in 5000 tries")
    assert pki.load_certificate(data) == cert
    assert verify(data).ok
