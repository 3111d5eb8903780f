"""Issued certificates follow DESIGN.md exactly: device, service, server and CA profiles."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from fleet import pki
from fleet.pki import Identity

from .x509_factory import TRUST_DOMAIN, AnyKey, cached_key, make_ca, spiffe

NOW = datetime.now(UTC).replace(microsecond=0)
CA = make_ca(now=NOW)
LIFETIME = timedelta(days=30)


def ext(cert: x509.Certificate,
        kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def device_cert(**kwargs: object) -> x509.Certificate:
    return CA.issue("dev-1", now=NOW, lifetime=LIFETIME, organization="Fleet",
                    **kwargs)  # type: ignore[arg-type]


def test_device_subject_is_organization_and_device_id() -> None:
    assert device_cert().subject == x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fleet"),
        x509.NameAttribute(NameOID.COMMON_NAME, "dev-1"),
    ])
    assert device_cert().issuer == CA.issuing.subject


def test_device_san_is_exactly_its_spiffe_uri() -> None:
    san = ext(device_cert(), x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier(spiffe("dev-1"))]  # type: ignore[call-overload]
    assert not san.critical  # the subject is not empty (RFC 5280 4.2.1.6)


def test_device_extended_key_usage_is_client_auth_only() -> None:
    eku = ext(device_cert(), x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]


def test_device_key_usage_is_digital_signature_only_and_critical() -> None:
    ku = ext(device_cert(), x509.KeyUsage)
    assert ku.critical
    value = ku.value
    assert isinstance(value, x509.KeyUsage)
    assert value.digital_signature
    assert not any((value.content_commitment, value.key_encipherment, value.data_encipherment,
                    value.key_agreement, value.key_cert_sign, value.crl_sign))


def test_device_basic_constraints_ca_false_and_critical() -> None:
    bc = ext(device_cert(), x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=False, path_length=None)


def test_device_has_subject_and_authority_key_identifiers() -> None:
    cert = device_cert()
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    issuing_ski = ext(CA.issuing, x509.SubjectKeyIdentifier).value
    assert isinstance(issuing_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == issuing_ski.digest


def test_serial_numbers_are_positive_below_2_pow_159_and_random() -> None:
    serials = {device_cert().serial_number for _ in range(40)}
    assert len(serials) == 40
    assert all(0 < s < 2**159 for s in serials)
    assert max(s.bit_length() for s in serials) > 150  # drawn from the whole range


def test_explicit_serial_number_is_used() -> None:
    profile = pki.identity_profile(Identity("device", "dev-1"), trust_domain=TRUST_DOMAIN,
                                   lifetime=LIFETIME)
    cert = pki.issue_certificate(profile=profile, public_key=cached_key("p256").public_key(),
                                 issuer_key=CA.issuing_key, issuer=CA.issuing, now=NOW,
                                 serial_number=0x1234)
    assert cert.serial_number == 0x1234


def test_validity_is_backdated_five_minutes_and_lasts_the_lifetime() -> None:
    cert = device_cert()
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + LIFETIME


def test_lifetime_of_seconds_for_simulation() -> None:
    cert = CA.issue("dev-1", now=NOW, lifetime=timedelta(seconds=30))
    assert cert.not_valid_after_utc == NOW + timedelta(seconds=30)


def test_not_after_is_capped_at_the_issuer_expiry() -> None:
    short = make_ca(now=NOW, issuing_lifetime=timedelta(days=10))
    cert = short.issue("dev-1", now=NOW, lifetime=timedelta(days=30))
    assert cert.not_valid_after_utc == short.issuing.not_valid_after_utc
    assert cert.not_valid_after_utc < NOW + timedelta(days=30)


def test_no_crl_distribution_point_or_aia_without_public_base_url() -> None:
    cert = device_cert()
    for kind in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(kind)


@pytest.mark.parametrize("base", ["https://fleet.example.com", "https://fleet.example.com/"])
def test_crl_distribution_point_and_aia_with_public_base_url(base: str) -> None:
    cert = device_cert(public_base_url=base)
    cdp = ext(cert, x509.CRLDistributionPoints).value
    assert isinstance(cdp, x509.CRLDistributionPoints)
    assert cdp[0].full_name == [x509.UniformResourceIdentifier("https://fleet.example.com/crl")]
    aia = ext(cert, x509.AuthorityInformationAccess).value
    assert isinstance(aia, x509.AuthorityInformationAccess)
    assert [(a.access_method, a.access_location) for a in aia] == [
        (AuthorityInformationAccessOID.OCSP,
         x509.UniformResourceIdentifier("https://fleet.example.com/ocsp")),
        (AuthorityInformationAccessOID.CA_ISSUERS,
         x509.UniformResourceIdentifier("https://fleet.example.com/.well-known/est/cacerts")),
    ]


def test_exactly_the_profile_extensions_are_present() -> None:
    assert {type(e.value) for e in device_cert().extensions} == {
        x509.BasicConstraints, x509.KeyUsage, x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier, x509.ExtendedKeyUsage, x509.SubjectAlternativeName,
    }


def test_ocsp_responder_profile_is_ocsp_signing_only_with_nocheck() -> None:
    cert = CA.sign(pki.ocsp_responder_profile("Fleet OCSP 1", lifetime=timedelta(hours=12)),
                   now=NOW)
    assert ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.OCSP_SIGNING])
    assert not ext(cert, x509.OCSPNoCheck).critical
    assert ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(ca=False,
                                                                           path_length=None)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=12,
                                                                             minutes=5)
    assert {type(e.value) for e in cert.extensions} == {
        x509.BasicConstraints, x509.KeyUsage, x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier, x509.ExtendedKeyUsage, x509.OCSPNoCheck,
    }


def test_service_certificate_names_the_service() -> None:
    cert = CA.issue(Identity("service", "telemetry"), now=NOW)
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://fleet.local/service/telemetry"]
    assert pki.identity_from_certificate(cert, TRUST_DOMAIN) == Identity("service", "telemetry")


@pytest.mark.parametrize("kind", ["p256", "p384", "ed25519", "rsa2048"])
def test_leaf_keeps_the_requested_public_key(kind: str) -> None:
    key = cached_key(kind)
    cert = CA.issue("dev-1", now=NOW, key=key)
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(CA.issuing)


@pytest.mark.parametrize(("issuer_kind", "algorithm"), [
    pytest.param("p256", hashes.SHA256, id="p256-sha256"),
    pytest.param("p384", hashes.SHA384, id="p384-sha384"),
    pytest.param("rsa2048", hashes.SHA256, id="rsa-sha256"),
    pytest.param("ed25519", type(None), id="ed25519-pure"),
])
def test_signature_hash_follows_the_issuer_key(issuer_kind: str, algorithm: type) -> None:
    issuer_key: AnyKey = cached_key(issuer_kind)
    root = pki.issue_certificate(
        profile=pki.ca_profile("Root", lifetime=timedelta(days=1), path_length=1),
        public_key=issuer_key.public_key(), issuer_key=issuer_key, issuer=None, now=NOW)
    assert isinstance(root.signature_hash_algorithm, algorithm)
    root.verify_directly_issued_by(root)


def test_server_profile_has_dns_and_ip_names_and_server_auth() -> None:
    profile = pki.server_profile(["localhost", "127.0.0.1", "::1"], lifetime=timedelta(days=1))
    cert = CA.sign(profile, now=NOW)
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [  # type: ignore[call-overload]
        ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_before_utc == NOW


@pytest.mark.parametrize("path_length", [0, 1])
def test_ca_profile(path_length: int) -> None:
    cert = CA.sign(pki.ca_profile("Sub CA", lifetime=timedelta(days=1), path_length=path_length),
                   now=NOW)
    assert ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(
        ca=True, path_length=path_length)
    ku = ext(cert, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage)
    assert (ku.key_cert_sign, ku.crl_sign, ku.digital_signature) == (True, True, False)


def test_root_is_self_signed_with_matching_key_identifiers() -> None:
    root = CA.root
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    ski = ext(root, x509.SubjectKeyIdentifier).value
    aki = ext(root, x509.AuthorityKeyIdentifier).value
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ski.digest
