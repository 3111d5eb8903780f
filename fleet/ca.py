"""The CA on disk: a root and an issuing CA, keys encrypted at rest, and the server certificate.

Layout under the data dir::

    ca/root.pem  ca/root.key        self-signed root (key encrypted)
    ca/issuing.pem  ca/issuing.key  the CA that signs devices, services and CRLs (key encrypted)
    ca/chain.pem                    issuing + root, what clients and servers trust
    ca/passphrase                   generated passphrase when none is supplied (0600)
    server/cert.pem  server/key.pem TLS server certificate (+ issuing CA) for EST and the broker

Like everything in the data dir, these are private: files 0600, directories 0700 (fleet.files).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from fleet.errors import CAError, KeyPolicyError
from fleet.files import write_private
from fleet.pki import (
    PrivateKey,
    ca_profile,
    certificate_pem,
    generate_private_key,
    issue_certificate,
    load_private_key_pem,
    private_key_pem,
    server_profile,
)
from fleet.pki.keys import KeyType
from fleet.settings import Settings

PASSPHRASE_ENV = "FLEET_CA_PASSPHRASE"  # noqa: S105 - the variable name, not a secret


@dataclass(frozen=True, slots=True)
class Trust:
    """The fleet CA certificates alone: enough to verify, never to sign."""

    root: x509.Certificate
    issuing: x509.Certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return (self.issuing, self.root) if self.issuing != self.root else (self.root,)

    def chain_pem(self) -> str:
        return "".join(certificate_pem(c) for c in self.chain)


@dataclass(frozen=True, slots=True)
class CA(Trust):
    """The loaded, unlocked issuing CA and the root it chains to."""

    issuing_key: PrivateKey


@dataclass(frozen=True, slots=True)
class Paths:
    root: Path
    root_key: Path
    issuing: Path
    issuing_key: Path
    chain: Path
    passphrase: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def of(cls, settings: Settings) -> Paths:
        ca, server = settings.ca_dir, settings.server_dir
        return cls(
            root=ca / "root.pem", root_key=ca / "root.key", issuing=ca / "issuing.pem",
            issuing_key=ca / "issuing.key", chain=ca / "chain.pem",
            passphrase=settings.passphrase_file if str(settings.passphrase_file) not in ("", ".")
            else ca / "passphrase",
            server_cert=server / "cert.pem", server_key=server / "key.pem",
        )


def ca_exists(settings: Settings) -> bool:
    paths = Paths.of(settings)
    return paths.issuing.exists() or paths.issuing_key.exists()


def read_passphrase(settings: Settings, *, create: bool = False) -> tuple[bytes, bool]:
    """The CA key passphrase from FLEET_CA_PASSPHRASE or the passphrase file.

    With *create*, a missing file is generated (0600). Returns (passphrase, generated).
    """
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env.encode(), False
    path = Paths.of(settings).passphrase
    if path.exists():
        try:
            value = path.read_bytes().strip()
        except OSError as exc:
            raise CAError(f"cannot read the passphrase file {path}: {exc.strerror}") from exc
        if not value:
            raise CAError(f"passphrase file {path} is empty")
        return value, False
    if not create:
        raise CAError(
            f"no CA passphrase: set {PASSPHRASE_ENV} or create the passphrase file {path}"
        )
    value = secrets.token_urlsafe(32).encode()
    write_private(path, value + b"\n")
    return value, True


def init_ca(settings: Settings, *, now: datetime) -> tuple[CA, bool]:
    """Create root and issuing CA unless one exists; returns (ca, created)."""
    if ca_exists(settings):
        return load_ca(settings), False
    passphrase, _ = read_passphrase(settings, create=True)
    key_type: KeyType = settings.ca_key_type  # type: ignore[assignment]
    org = settings.organization or None
    root_key = generate_private_key(key_type)
    root = issue_certificate(
        profile=ca_profile(f"{settings.organization or 'Fleet'} Root CA",
                           lifetime=settings.root_lifetime, path_length=1, organization=org),
        public_key=root_key.public_key(), issuer_key=root_key, issuer=None, now=now,
    )
    issuing_key = generate_private_key(key_type)
    issuing = issue_certificate(
        profile=ca_profile(f"{settings.organization or 'Fleet'} Issuing CA",
                           lifetime=settings.issuing_lifetime, path_length=0, organization=org),
        public_key=issuing_key.public_key(), issuer_key=root_key, issuer=root, now=now,
    )
    ca = CA(root=root, issuing=issuing, issuing_key=issuing_key)
    _store(settings, ca, passphrase, root_key=root_key)
    return ca, True


def _store(settings: Settings, ca: CA, passphrase: bytes, *, root_key: PrivateKey | None) -> None:
    paths = Paths.of(settings)
    if root_key is not None:
        write_private(paths.root_key, private_key_pem(root_key, passphrase))
    write_private(paths.issuing_key, private_key_pem(ca.issuing_key, passphrase))
    write_private(paths.root, certificate_pem(ca.root).encode())
    write_private(paths.issuing, certificate_pem(ca.issuing).encode())
    write_private(paths.chain, ca.chain_pem().encode())


def load_trust(settings: Settings) -> Trust:
    """The root and issuing certificates, without unlocking the CA key."""
    paths = Paths.of(settings)
    if not paths.issuing.exists() or not paths.root.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")
    return Trust(root=_read_certificate(paths.root), issuing=_read_certificate(paths.issuing))


def load_ca(settings: Settings) -> CA:
    """Load and unlock the issuing CA."""
    paths = Paths.of(settings)
    if not paths.issuing.exists() or not paths.issuing_key.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")
    passphrase, _ = read_passphrase(settings)
    try:
        key = load_private_key_pem(paths.issuing_key.read_bytes(), passphrase)
    except (OSError, ValueError, TypeError, KeyPolicyError) as exc:
        raise CAError(
            f"cannot unlock the CA key {paths.issuing_key}: wrong passphrase or unreadable key"
        ) from exc
    issuing = _read_certificate(paths.issuing)
    root = _read_certificate(paths.root)
    if issuing.public_key() != key.public_key():
        raise CAError(f"{paths.issuing_key} does not belong to {paths.issuing}")
    return CA(root=root, issuing=issuing, issuing_key=key)


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CAError(f"cannot read the CA certificate {path}: {exc}") from exc


def import_ca(
    settings: Settings, *, cert_pem: bytes, key_pem: bytes, key_passphrase: bytes | None,
) -> CA:
    """Adopt an existing issuing CA (its PEM may carry the chain up to the root)."""
    if ca_exists(settings):
        raise CAError(f"a CA already exists in {settings.ca_dir}; refusing to replace it")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CAError(f"cannot read the CA certificate: {exc}") from exc
    try:
        key = load_private_key_pem(key_pem, key_passphrase)
    except (ValueError, TypeError, KeyPolicyError) as exc:
        raise CAError("cannot read the CA key: wrong passphrase or not a PEM private key") \
            from exc
    issuing = certs[0]
    if issuing.public_key() != key.public_key():
        raise CAError("the key does not belong to the first certificate given")
    try:
        constraints = issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = issuing.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise CAError(f"the certificate is not a CA: {exc}") from exc
    if not constraints.ca or not usage.key_cert_sign:
        raise CAError("the certificate is not a CA allowed to sign certificates (keyCertSign)")
    root = certs[-1]
    if root.issuer != root.subject:
        raise CAError("the PEM must end with the self-signed root of the issuing CA's chain")
    for child, parent in pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CAError(f"{child.subject.rfc4514_string()} is not issued by "
                          f"{parent.subject.rfc4514_string()}; give the chain in order, "
                          "issuing CA first, root last") from exc
    passphrase, _ = read_passphrase(settings, create=True)
    ca = CA(root=root, issuing=issuing, issuing_key=key)
    _store(settings, ca, passphrase, root_key=None)
    return ca


def ensure_server_certificate(
    settings: Settings, ca: CA, *, now: datetime, hostnames: Sequence[str] | None = None,
) -> bool:
    """Issue the TLS server certificate unless a valid one for these hostnames exists."""
    paths = Paths.of(settings)
    wanted = tuple(hostnames or settings.hostnames)
    if paths.server_cert.exists() and paths.server_key.exists():
        current = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in names.get_values_for_type(x509.DNSName)} | {
            str(v) for v in names.get_values_for_type(x509.IPAddress)}
        if (set(wanted) <= have and current.issuer == ca.issuing.subject
                and current.not_valid_after_utc > now + timedelta(days=1)):
            return False
    key = generate_private_key("p256")
    cert = issue_certificate(
        profile=server_profile(wanted, lifetime=settings.server_lifetime,
                               organization=settings.organization or None),
        public_key=key.public_key(), issuer_key=ca.issuing_key, issuer=ca.issuing, now=now,
    )
    write_private(paths.server_key, private_key_pem(key))
    write_private(paths.server_cert,
                  (certificate_pem(cert) + certificate_pem(ca.issuing)).encode())
    return True


def root_fingerprint(ca: CA) -> str:
    from fleet.pki import fingerprint_sha256

    return fingerprint_sha256(ca.root)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
