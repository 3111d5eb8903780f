"""What a device does with keys and certificates, on ``cryptography`` alone (device side).

The simulator checks Fleet from the far side of the wire, so nothing here comes from Fleet: a
bug in how Fleet builds or reads a CSR, a PKCS#7 or a PEM cannot hide on both sides at once.
Everything is the minimum a device needs: a key, a PKCS#10 request (RFC 2986), the
certificates of an EST response (RFC 7030 4.1.3 and 4.2.3, base64 per RFC 8951 3), PEM text
(RFC 7468), a certificate fingerprint, and the certificates a misbehaving device forges.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
"""The keys a device generates (RFC 5480 EC, RFC 8410 Ed25519, RFC 8017 RSA)."""

KEY_TYPES: tuple[str, ...] = ("p256", "p384", "ed25519", "rsa2048", "rsa3072")
CLOCK_SKEW = timedelta(minutes=1)
"""How far back a forged certificate's notBefore goes."""


def generate_key(key_type: str) -> PrivateKey:
    """A fresh key of one of :data:`KEY_TYPES`."""
    match key_type:
        case "p256":
            return ec.generate_private_key(ec.SECP256R1())
        case "p384":
            return ec.generate_private_key(ec.SECP384R1())
        case "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        case "rsa2048" | "rsa3072":
            return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    raise ValueError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def digest_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """Ed25519 signs the message itself (RFC 8410 6); ECDSA uses the hash matching the
    curve's strength (RFC 5480 4); RSA PKCS#1 v1.5 uses SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


def build_csr(common_name: str, key: PrivateKey) -> bytes:
    """DER PKCS#10 (RFC 2986) naming only ``CN=<common_name>``: the server decides the rest."""
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    return request.sign(key, digest_for(key)).public_bytes(serialization.Encoding.DER)


def certs_only(body: bytes) -> list[x509.Certificate]:
    """The certificates of an EST response body: base64 (line breaks and spaces allowed,
    RFC 8951 3) of a DER certs-only PKCS#7. A body that is neither raises ``ValueError``."""
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    try:
        return pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as exc:
        raise ValueError(f"not a certs-only PKCS#7: {exc}") from None


def certificate_pem(certificate: x509.Certificate) -> str:
    """RFC 7468 5: ``-----BEGIN CERTIFICATE-----``."""
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def private_key_pem(key: PrivateKey) -> bytes:
    """RFC 7468 10: unencrypted PKCS#8, ``-----BEGIN PRIVATE KEY-----``."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the DER certificate, the form a root is pinned in."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def device_uri(trust_domain: str, device_id: str) -> str:
    """The SPIFFE ID a device certificate names in its URI SAN."""
    return f"spiffe://{trust_domain}/device/{device_id}"


def self_signed_ca(common_name: str, *, lifetime: timedelta) -> tuple[PrivateKey,
                                                                      x509.Certificate]:
    """A root CA of the device's own making (one Fleet never trusted), P-256, with the
    extensions RFC 5280 4.2.1 asks of a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        _validity(x509.CertificateBuilder(), lifetime)
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256()))
    return key, certificate


def client_certificate(common_name: str, *, uri: str, issuer_key: PrivateKey,
                       issuer: x509.Certificate, lifetime: timedelta,
                       ) -> tuple[PrivateKey, x509.Certificate]:
    """A TLS client certificate shaped like a device's (CN, one URI SAN, clientAuth) on a
    fresh P-256 key, signed by *issuer*: valid under RFC 5280 wherever *issuer* is trusted."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _validity(x509.CertificateBuilder(), lifetime)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject).public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        .sign(issuer_key, digest_for(issuer_key)))
    return key, certificate


def _validity(builder: x509.CertificateBuilder, lifetime: timedelta) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (builder.serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + lifetime))

