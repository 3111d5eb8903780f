"""A device's key and certificate: CSR, lifetime as the device sees it, optional storage."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from device_sim.tls import client_context
from fleet.files import write_private, write_public
from fleet.pki import KeyType, PrivateKey, certificate_pem, generate_private_key, private_key_pem
from fleet.pki.issue import signature_hash


def build_csr(common_name: str, key: PrivateKey) -> bytes:
    """DER PKCS#10 naming only ``CN=<common_name>``: the server decides everything else."""
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    return request.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.DER)


def new_key(key_type: str) -> PrivateKey:
    kind: KeyType = key_type  # type: ignore[assignment]
    return generate_private_key(kind)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A certificate, its key, and the TLS context that presents them.

    Fleet backdates ``notBefore`` a few minutes for devices with slow clocks, so a device
    measures the lifetime from the moment it received the certificate, not from ``notBefore``.
    """

    key: PrivateKey
    certificate: x509.Certificate
    received_at: float
    """Run time (seconds) at which the certificate arrived."""
    lifetime: float
    """Seconds from :attr:`received_at` to ``notAfter``."""
    context: ssl.SSLContext

    @classmethod
    def issued(cls, key: PrivateKey, certificate: x509.Certificate, *,
               anchors: Sequence[x509.Certificate], received_at: float) -> Credentials:
        lifetime = (certificate.not_valid_after_utc - datetime.now(UTC)).total_seconds()
        return cls(key=key, certificate=certificate, received_at=received_at,
                   lifetime=lifetime,
                   context=client_context(anchors, certificate, private_key_pem(key)))

    @property
    def expires_at(self) -> float:
        return self.received_at + self.lifetime

    def renew_at(self, fraction: float) -> float:
        return self.received_at + self.lifetime * fraction

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    def save(self, directory: Path, name: str) -> None:
        """Write ``<name>.key`` (0600) and ``<name>.pem`` in *directory*, as firmware would."""
        write_private(directory / f"{name}.key", private_key_pem(self.key))
        write_public(directory / f"{name}.pem", certificate_pem(self.certificate).encode())
