"""A device's key and certificate: lifetime as the device sees it, optional storage (device
side: nothing from Fleet).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from device_sim.crypto import PrivateKey, certificate_pem, private_key_pem
from device_sim.tls import client_context

KEY_MODE = 0o600
CERTIFICATE_MODE = 0o644


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
        """Write ``<name>.key`` (0600) and ``<name>.pem`` in *directory*, as firmware would;
        a renewal replaces both."""
        write_file(directory / f"{name}.key", private_key_pem(self.key), mode=KEY_MODE)
        write_file(directory / f"{name}.pem", certificate_pem(self.certificate).encode(),
                   mode=CERTIFICATE_MODE)


def write_file(path: Path, data: bytes, *, mode: int) -> None:
    """Replace *path* with *data*. The new file is created with *mode* (which the umask can
    only narrow) before the first byte is written, then renamed over the old one, so a
    reader sees the old file or the new and the key is never readable by others."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
