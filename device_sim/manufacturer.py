"""The manufacturer of simulated devices (device side, ``cryptography`` alone): a vendor CA
and the manufacturer certificates (IEEE 802.1AR IDevIDs) it installs in its devices.

An IDevID names the device in its subject's serialNumber (802.1AR 8.6), optionally also as a
CN or in a URI subjectAltName; it carries keyUsage digitalSignature and, so that TLS stacks
accept it as a client certificate, extendedKeyUsage clientAuth. 802.1AR's "no well-defined
expiration" is notAfter 99991231235959Z; the simulator gives its certificates a lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_sim.crypto import (
    CLOCK_SKEW,
    PrivateKey,
    certificate_pem,
    generate_key,
    private_key_pem,
    self_signed_ca,
)

VENDOR_CA_LIFETIME = timedelta(days=3650)
IDEVID_LIFETIME = timedelta(days=3650)


@dataclass(frozen=True)
class Idevid:
    """A device's manufacturer certificate and its key."""

    key: PrivateKey
    certificate: x509.Certificate

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """The certificate and key as PEM files (the key 0600): (certificate, key)."""
        cert_file = directory / f"{name}.idevid.pem"
        key_file = directory / f"{name}.idevid.key"
        cert_file.write_text(certificate_pem(self.certificate))
        key_file.touch(mode=0o600)
        key_file.write_bytes(private_key_pem(self.key))
        return cert_file, key_file


@dataclass
class VendorCA:
    """A manufacturer's CA: a root that signs its devices' certificates and its CRL."""

    name: str
    key: PrivateKey = field(init=False)
    certificate: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.key, self.certificate = self_signed_ca(f"{self.name} Device CA",
                                                     lifetime=VENDOR_CA_LIFETIME)

    def pem(self) -> str:
        return certificate_pem(self.certificate)

    def issue(self, serial_number: str | None, *, common_name: str | None = None,
              uri: str | None = None, lifetime: timedelta = IDEVID_LIFETIME,
              not_before: datetime | None = None, key: PrivateKey | None = None,
              digital_signature: bool = True) -> Idevid:
        """An IDevID for the device *serial_number* (None: a subject without one)."""
        key = key or generate_key("p256")
        attributes = []
        if common_name is not None:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        if serial_number is not None:
            attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name))
        start = not_before or datetime.now(UTC) - CLOCK_SKEW
        builder = (
            x509.CertificateBuilder().serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + lifetime)
            .subject_name(x509.Name(attributes)).issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=digital_signature, content_commitment=False,
                key_encipherment=not digital_signature, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False))
        if uri is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                critical=False)
        return Idevid(key, builder.sign(self.key, hashes.SHA256()))

    def crl(self, revoked: list[x509.Certificate], *, next_update: timedelta) -> bytes:
        """The vendor's CRL (DER) listing *revoked*, valid for *next_update*."""
        now = datetime.now(UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.certificate.subject)
                   .last_update(now - CLOCK_SKEW).next_update(now + next_update))
        for certificate in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(certificate.serial_number)
                .revocation_date(now - CLOCK_SKEW).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(Encoding.DER)
