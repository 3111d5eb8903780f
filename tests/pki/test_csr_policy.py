"""What a CSR may ask for: key policy, requested extensions, requested identity, re-enrollment."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet import pki
from fleet.errors import IdentityError, KeyPolicyError, ProfileError
from fleet.pki import Identity

from .x509_factory import TRUST_DOMAIN, cached_key, make_ca, make_csr, pem, spiffe, subject

DEV1 = Identity("device", "dev-1")


def inspect(csr: x509.CertificateSigningRequest) -> pki.CSRRequest:
    return pki.inspect_csr(pki.load_csr(pem(csr)))


# -- key policy ------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "name"), [
    pytest.param("p256", "EC P-256", id="ok/ec-p256"),
    pytest.param("p384", "EC P-384", id="ok/ec-p384"),
    pytest.param("ed25519", "Ed25519", id="ok/ed25519"),
    pytest.param("rsa2048", "RSA 2048", id="ok/rsa-2048"),
    pytest.param("rsa3072", "RSA 3072", id="ok/rsa-3072"),
])
def test_key_policy_accepts(kind: str, name: str) -> None:
    request = inspect(make_csr("dev-1", key=cached_key(kind)))
    assert request.key_name == name
    assert request.common_name == "dev-1"


@pytest.mark.parametrize(("kind", "name"), [
    pytest.param("rsa1024", "RSA 1024", id="fail/rsa-1024"),
    pytest.param("p521", "EC secp521r1", id="fail/ec-p521"),
    pytest.param("secp256k1", "EC secp256k1", id="fail/ec-secp256k1"),
    pytest.param("brainpoolP256r1", "EC brainpoolP256r1", id="fail/ec-brainpool"),
    pytest.param("ed448", "Ed448", id="fail/ed448"),
    pytest.param("dsa2048", "DSA", id="fail/dsa-2048"),
])
def test_key_policy_refuses(kind: str, name: str) -> None:
    csr = pki.load_csr(pem(make_csr("dev-1", key=cached_key(kind))))  # proof of possession ok
    with pytest.raises(KeyPolicyError, match=rf"key {name}\b.*not accepted"):
        pki.inspect_csr(csr)


@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_every_generated_key_type_passes_the_policy(key_type: pki.KeyType) -> None:
    key = cached_key(key_type) if key_type.startswith("rsa") else \
        pki.generate_private_key(key_type)
    assert pki.check_key_policy(key.public_key())


def test_generate_private_key_refuses_unknown_type() -> None:
    with pytest.raises(KeyPolicyError, match="unknown key type"):
        pki.generate_private_key("rsa1024")  # type: ignore[arg-type]


def test_private_key_pem_roundtrip_encrypted_and_plain() -> None:
    key = cached_key("p256")
    encrypted = pki.private_key_pem(key, b"s3cret")
    assert b"ENCRYPTED" in encrypted
    assert pki.load_private_key_pem(encrypted, b"s3cret").public_key() == key.public_key()
    with pytest.raises(ValueError, match="password"):
        pki.load_private_key_pem(encrypted, b"wrong")
    plain = pki.private_key_pem(key)
    assert b"ENCRYPTED" not in plain
    assert pki.load_private_key_pem(plain).public_key() == key.public_key()


def test_load_private_key_pem_refuses_keys_that_cannot_sign_certificates() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    data = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(KeyPolicyError, match="cannot sign"):
        pki.load_private_key_pem(data)


# -- requested extensions: the server decides the profile ------------------------------------

def key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False,
              crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False,
                         decipher_only=False)


@pytest.mark.parametrize(("csr", "message"), [
    pytest.param(make_csr(extensions=[x509.BasicConstraints(ca=True, path_length=None)]),
                 "CA:true", id="fail/ca-true"),
    pytest.param(make_csr(extensions=[key_usage(key_cert_sign=True)]), "keyCertSign",
                 id="fail/key-cert-sign"),
    pytest.param(make_csr(extensions=[key_usage(digital_signature=True, crl_sign=True)]),
                 "cRLSign", id="fail/crl-sign"),
    pytest.param(make_csr(extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])]),
                 "serverAuth", id="fail/eku-server-auth"),
    pytest.param(make_csr(extensions=[x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH])]),
                 "serverAuth", id="fail/eku-client-and-server-auth"),
    pytest.param(make_csr(extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])]),
                 "codeSigning", id="fail/eku-code-signing"),
    pytest.param(make_csr(general_names=[x509.DNSName("dev-1.example.com")]),
                 "subject alternative names", id="fail/extra-dns-san"),
    pytest.param(make_csr(uris=[spiffe("dev-1")], general_names=[x509.DNSName("evil.com")]),
                 "subject alternative names", id="fail/own-uri-plus-dns-san"),
    pytest.param(make_csr(general_names=[x509.RFC822Name("dev@example.com")]),
                 "subject alternative names", id="fail/email-san"),
    pytest.param(make_csr(uris=[spiffe("dev-1"), spiffe("dev-2")]),
                 "subject alternative names", id="fail/two-uri-sans"),
])
def test_csr_asking_for_more_than_a_device_may_have_is_refused(
    csr: x509.CertificateSigningRequest, message: str,
) -> None:
    with pytest.raises(ProfileError, match=message):
        inspect(csr)


@pytest.mark.parametrize("csr", [
    pytest.param(make_csr(), id="ok/no-extensions"),
    pytest.param(make_csr(extensions=[x509.BasicConstraints(ca=False, path_length=None)]),
                 id="ok/ca-false"),
    pytest.param(make_csr(extensions=[key_usage(digital_signature=True)]),
                 id="ok/digital-signature"),
    pytest.param(make_csr(extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])]),
                 id="ok/eku-client-auth"),
    pytest.param(make_csr(uris=[spiffe("dev-1")]), id="ok/own-spiffe-uri"),
    pytest.param(make_csr(name=subject("dev-1", x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                    "Acme"))),
                 id="ok/extra-organization-in-subject"),
])
def test_csr_within_the_device_profile_names_its_identity(
    csr: x509.CertificateSigningRequest,
) -> None:
    pki.check_requested_identity(inspect(csr), DEV1, TRUST_DOMAIN)


@pytest.mark.parametrize(("csr", "error", "message"), [
    pytest.param(make_csr(None), IdentityError, "exactly one CN", id="fail/no-cn"),
    pytest.param(make_csr(name=subject("dev-1", x509.NameAttribute(NameOID.COMMON_NAME, "dev-2"))),
                 IdentityError, "exactly one CN", id="fail/two-cns"),
])
def test_csr_subject_must_carry_one_cn(
    csr: x509.CertificateSigningRequest, error: type[Exception], message: str,
) -> None:
    with pytest.raises(error, match=message):
        inspect(csr)


@pytest.mark.parametrize(("csr", "message"), [
    pytest.param(make_csr("dev-2"), "CN='dev-2'", id="fail/other-device-cn"),
    pytest.param(make_csr("dev-1", uris=[spiffe("dev-2")]), "device/dev-2",
                 id="fail/foreign-device-uri"),
    pytest.param(make_csr("dev-1", uris=[spiffe("dev-1", "evil.example")]), "evil.example",
                 id="fail/own-name-other-trust-domain"),
    pytest.param(make_csr("dev-1", uris=[spiffe("dev-1", kind="service")]), "service/dev-1",
                 id="fail/service-uri-for-device"),
    pytest.param(make_csr("dev-1", uris=["https://example.com/dev-1"]), "example.com",
                 id="fail/non-spiffe-uri"),
])
def test_csr_naming_another_identity_is_refused(
    csr: x509.CertificateSigningRequest, message: str,
) -> None:
    request = inspect(csr)
    with pytest.raises(IdentityError, match=message):
        pki.check_requested_identity(request, DEV1, TRUST_DOMAIN)


# -- re-enrollment: RFC 7030 4.2.2 same Subject and SAN ---------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
CA = make_ca(now=NOW)
CERT = CA.issue("dev-1", now=NOW, organization="Fleet")
ORG = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fleet")


@pytest.mark.parametrize(("csr", "same"), [
    pytest.param(make_csr("dev-1"), True, id="ok/cn-only"),
    pytest.param(make_csr(name=subject("dev-1", ORG)), True, id="ok/cn-and-organization"),
    pytest.param(make_csr("dev-1", uris=[spiffe("dev-1")]), True, id="ok/cn-and-own-uri"),
    pytest.param(make_csr(name=subject("dev-1", ORG), uris=[spiffe("dev-1")]), True,
                 id="ok/identical-subject-and-san"),
    pytest.param(make_csr("dev-2"), False, id="fail/other-cn"),
    pytest.param(make_csr(None, uris=[spiffe("dev-1")]), False, id="fail/no-cn"),
    pytest.param(make_csr(name=subject("dev-1", x509.NameAttribute(
        NameOID.ORGANIZATION_NAME, "Other"))), False, id="fail/other-organization"),
    pytest.param(make_csr(name=subject("dev-1", x509.NameAttribute(
        NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"))), False, id="fail/extra-attribute"),
    pytest.param(make_csr(name=subject("dev-1", x509.NameAttribute(NameOID.COMMON_NAME, "dev-1"))),
                 False, id="fail/cn-twice"),
    pytest.param(make_csr("dev-1", uris=[spiffe("dev-2")]), False, id="fail/other-device-uri"),
    pytest.param(make_csr("dev-1", uris=[spiffe("dev-1", "evil.example")]), False,
                 id="fail/other-trust-domain-uri"),
])
def test_same_subject_and_san(csr: x509.CertificateSigningRequest, same: bool) -> None:
    assert pki.same_subject_and_san(csr, CERT) is same
