"""The CA on disk: a root, its issuing CAs, keys encrypted at rest, and the server certificate.

Layout under the data dir::

    ca/root.pem  ca/root.key        self-signed root (key encrypted; no root.key while the
                                    root key is kept offline, see export_root_key)
    ca/issuing.pem  ca/issuing.key  the active issuing CA: signs devices, services, its CRL
    ca/issuing-<n>.pem  -<n>.key    issuing CA number n in its overlap after a rotation:
                                    still trusted and signing its own CRL, issuing nothing
    ca/retired/issuing-<n>.pem      issuing CA number n retired (its key removed): not trusted
    ca/chain.pem                    the issuing CAs in use (active first) + root: what clients
                                    and servers trust
    ca/passphrase                   generated passphrase when none is supplied (0600)
    server/cert.pem  server/key.pem TLS server certificate (+ issuing CA) for EST and the broker

Issuing CAs are numbered in the order they were made: the first is 1, and the active one is
one more than the highest number on disk. A data dir that was never rotated holds only
``issuing.pem``, as it always did.

Like everything in the data dir, these are private: files 0600, directories 0700 (fleet.files).
"""

from __future__ import annotations

import enum
import os
import re
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
from fleet.files import private_dir, write_private
from fleet.pki import (
    PrivateKey,
    authority_key_id,
    ca_profile,
    certificate_pem,
    generate_private_key,
    issue_certificate,
    key_identifier,
    load_private_key_pem,
    private_key_pem,
    server_profile,
)
from fleet.pki.keys import KeyType
from fleet.settings import Settings

PASSPHRASE_ENV = "FLEET_CA_PASSPHRASE"  # noqa: S105 - the variable name, not a secret


class IssuingState(enum.StrEnum):
    """Where an issuing CA is in its life."""

    ACTIVE = "active"
    """Signs every new certificate and its own CRL."""
    RETIRING = "retiring"
    """In its overlap after a rotation: trusted, signs its own CRL, issues nothing."""
    RETIRED = "retired"
    """Trusted no more; its key is removed."""


@dataclass(frozen=True, slots=True)
class Issuing:
    """One issuing CA: its number, certificate and state."""

    number: int
    certificate: x509.Certificate
    state: IssuingState

    @property
    def key_id(self) -> str:
        """The authority key identifier of the certificates it issues (hex)."""
        return key_identifier(self.certificate.public_key())

    @property
    def crl_path(self) -> str:
        return crl_path(self.number)


def crl_path(number: int) -> str:
    """Where EST publishes the CRL of issuing CA *number*, and the distribution point its
    certificates name: ``/crl`` for the first (as before any rotation), ``/crl/<n>`` after."""
    return "/crl" if number == 1 else f"/crl/{number}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Trust:
    """The fleet CA certificates alone: enough to verify, never to sign."""

    root: x509.Certificate
    issuing: x509.Certificate
    """The active issuing CA."""
    number: int = 1
    """The active issuing CA's number."""
    retiring: tuple[Issuing, ...] = ()
    """Earlier issuing CAs in their overlap, newest first."""

    @property
    def issuers(self) -> tuple[Issuing, ...]:
        """Every issuing CA in use, the active one first."""
        return (Issuing(self.number, self.issuing, IssuingState.ACTIVE), *self.retiring)

    @property
    def issuer_certificates(self) -> tuple[x509.Certificate, ...]:
        return tuple(issuing.certificate for issuing in self.issuers)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        if self.issuing == self.root:
            return (self.root,)
        return (*self.issuer_certificates, self.root)

    def chain_pem(self) -> str:
        return "".join(certificate_pem(c) for c in self.chain)


@dataclass(frozen=True, slots=True, kw_only=True)
class CA(Trust):
    """The loaded, unlocked issuing CAs and the root they chain to."""

    issuing_key: PrivateKey
    retiring_keys: tuple[PrivateKey, ...] = ()
    """The keys of *retiring*, in the same order: each still signs its own CRL."""

    def signers(self) -> tuple[tuple[Issuing, PrivateKey], ...]:
        """Every issuing CA in use with its key, the active one first."""
        return tuple(zip(self.issuers, (self.issuing_key, *self.retiring_keys), strict=True))


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
    retired_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> Paths:
        ca, server = settings.ca_dir, settings.server_dir
        return cls(
            root=ca / "root.pem", root_key=ca / "root.key", issuing=ca / "issuing.pem",
            issuing_key=ca / "issuing.key", chain=ca / "chain.pem",
            passphrase=settings.passphrase_file if str(settings.passphrase_file) not in ("", ".")
            else ca / "passphrase",
            server_cert=server / "cert.pem", server_key=server / "key.pem",
            retired_dir=ca / "retired",
        )

    def numbered(self, number: int) -> tuple[Path, Path]:
        """Certificate and key of issuing CA *number* in its overlap."""
        return (self.issuing.with_name(f"issuing-{number}.pem"),
                self.issuing.with_name(f"issuing-{number}.key"))

    def retired(self, number: int) -> Path:
        return self.retired_dir / f"issuing-{number}.pem"


_NUMBERED = re.compile(r"issuing-([1-9][0-9]{0,8})\.pem")


def _numbers(directory: Path) -> list[int]:
    """The numbers of the issuing CA certificates in *directory*, highest first."""
    try:
        names = [entry.name for entry in directory.iterdir()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CAError(f"cannot read {directory}: {exc.strerror}") from exc
    return sorted((int(m.group(1)) for n in names if (m := _NUMBERED.fullmatch(n))),
                  reverse=True)


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
    """The root and the issuing CAs in use, without unlocking any key."""
    paths = Paths.of(settings)
    if not paths.issuing.exists() or not paths.root.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")
    root = _read_certificate(paths.root)
    issuing = _read_certificate(paths.issuing)
    number = 1 + max([*_numbers(settings.ca_dir), *_numbers(paths.retired_dir)], default=0)
    retiring: list[Issuing] = []
    for n in _numbers(settings.ca_dir):
        cert = _read_certificate(paths.numbered(n)[0])
        if cert == issuing:  # a rotation stopped before its new CA was in place
            number = n
            continue
        _require_issued_by_root(cert, root, paths.numbered(n)[0])
        retiring.append(Issuing(n, cert, IssuingState.RETIRING))
    return Trust(root=root, issuing=issuing, number=number, retiring=tuple(retiring))


def load_ca(settings: Settings) -> CA:
    """Load and unlock the issuing CAs in use."""
    paths = Paths.of(settings)
    if not paths.issuing.exists() or not paths.issuing_key.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")
    trust = load_trust(settings)
    passphrase, _ = read_passphrase(settings)
    key = _unlock(paths.issuing_key, trust.issuing, passphrase)
    retiring_keys = tuple(_unlock(paths.numbered(r.number)[1], r.certificate, passphrase)
                          for r in trust.retiring)
    return CA(root=trust.root, issuing=trust.issuing, number=trust.number,
              retiring=trust.retiring, issuing_key=key, retiring_keys=retiring_keys)


def issuing_cas(settings: Settings) -> list[Issuing]:
    """Every issuing CA there has been: those in use (active first), then the retired ones,
    newest first."""
    paths = Paths.of(settings)
    retired = [Issuing(n, _read_certificate(paths.retired(n)), IssuingState.RETIRED)
               for n in _numbers(paths.retired_dir)]
    return [*load_trust(settings).issuers, *retired]


def _unlock(path: Path, certificate: x509.Certificate, passphrase: bytes) -> PrivateKey:
    try:
        key = load_private_key_pem(path.read_bytes(), passphrase)
    except (OSError, ValueError, TypeError, KeyPolicyError) as exc:
        raise CAError(
            f"cannot unlock the CA key {path}: wrong passphrase or unreadable key"
        ) from exc
    if certificate.public_key() != key.public_key():
        raise CAError(f"{path} does not belong to {path.with_suffix('.pem')}")
    return key


def _require_issued_by_root(cert: x509.Certificate, root: x509.Certificate, path: Path) -> None:
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CAError(f"{path} is not an issuing CA of the root {root.subject.rfc4514_string()}") \
            from exc


def load_root_key(settings: Settings, *, path: Path | None = None,
                  passphrase: bytes | None = None) -> PrivateKey:
    """The root CA's key: from *path* when it is kept offline, else ``ca/root.key``.

    *passphrase* unlocks it; by default the CA passphrase (FLEET_CA_PASSPHRASE or the
    passphrase file) does. Refused unless it unlocks and is the key of ``ca/root.pem``.
    """
    paths = Paths.of(settings)
    source = path or paths.root_key
    if path is None and not source.exists():
        raise CAError(f"the root CA key is not in {settings.ca_dir} (it is kept offline): "
                      "give it with --root-key FILE")
    secret = passphrase if passphrase is not None else read_passphrase(settings)[0]
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read the root CA key {source}: {exc.strerror}") from exc
    try:
        key = load_private_key_pem(data, secret)
    except (ValueError, TypeError, KeyPolicyError) as exc:
        raise CAError(f"cannot unlock the root CA key {source}: wrong passphrase or not an "
                      "encrypted PEM private key") from exc
    root = _read_certificate(paths.root)
    if key.public_key() != root.public_key():
        raise CAError(f"{source} is not the key of the root CA {paths.root} "
                      f"({root.subject.rfc4514_string()})")
    return key


def check_root_key_target(settings: Settings, out: Path, *, force: bool = False) -> None:
    """Refuse a destination for the root key that exists (without *force*), whose directory
    does not, or that is inside the data dir (whose backups would carry it)."""
    if out.resolve().is_relative_to(settings.data_dir.resolve()):
        raise CAError(f"{out} is inside the data dir {settings.data_dir}: the root key must "
                      "leave it")
    if not out.parent.is_dir():
        raise CAError(f"{out.parent} is not a directory")
    if out.exists() and not force:
        raise CAError(f"{out} exists; use --force to replace it")


def export_root_key(settings: Settings, out: Path, *, remove: bool, force: bool = False,
                    passphrase: bytes | None = None) -> None:
    """Write the root CA key to *out* (0600), encrypted with *passphrase* if given, else as
    stored (with the CA passphrase); with *remove*, then delete ``ca/root.key``.

    The written file is read back and unlocked before anything is removed.
    """
    paths = Paths.of(settings)
    check_root_key_target(settings, out, force=force)
    if not paths.root_key.exists():
        raise CAError(f"no root CA key in {settings.ca_dir}: it is already kept offline")
    key = load_root_key(settings)
    data = private_key_pem(key, passphrase) if passphrase is not None \
        else paths.root_key.read_bytes()
    write_private(out, data)
    load_root_key(settings, path=out, passphrase=passphrase)
    if remove:
        paths.root_key.unlink()


def rotate_issuing(settings: Settings, *, root_key: PrivateKey, now: datetime) -> CA:
    """Make a new issuing CA under the root and make it the active one; the one it replaces
    stays trusted, in its overlap, until it is retired. Returns the rotated CA.

    The chain file gains the new CA and the server certificate is reissued by it, for the
    hostnames it has. Running services pick both up when they restart.
    """
    paths = Paths.of(settings)
    current = load_ca(settings)
    if root_key.public_key() != current.root.public_key():
        raise CAError(f"that key is not the key of the root CA {paths.root}")
    passphrase, _ = read_passphrase(settings)
    hostnames = _server_hostnames(paths)
    number = current.number + 1
    org = settings.organization or None
    key = generate_private_key(settings.ca_key_type)  # type: ignore[arg-type]
    cert = issue_certificate(
        profile=ca_profile(f"{settings.organization or 'Fleet'} Issuing CA {number}",
                           lifetime=settings.issuing_lifetime, path_length=0, organization=org),
        public_key=key.public_key(), issuer_key=root_key, issuer=current.root, now=now,
    )
    old_cert, old_key = paths.numbered(current.number)
    write_private(old_key, paths.issuing_key.read_bytes())
    write_private(old_cert, paths.issuing.read_bytes())
    write_private(paths.issuing_key, private_key_pem(key, passphrase))
    write_private(paths.issuing, certificate_pem(cert).encode())
    rotated = load_ca(settings)
    write_private(paths.chain, rotated.chain_pem().encode())
    ensure_server_certificate(settings, rotated, now=now, hostnames=hostnames)
    return rotated


def retiring_issuing(settings: Settings, number: int | None = None) -> Issuing:
    """Issuing CA *number* in its overlap (without *number*: the only one); refused for the
    active one, a retired one and one that never was."""
    paths = Paths.of(settings)
    trust = load_trust(settings)
    if number == trust.number:
        raise CAError(f"issuing CA {number} is the active one: rotate first "
                      "(fleet ca rotate-issuing), then retire it")
    known = ", ".join(str(r.number) for r in trust.retiring)
    if number is None:
        if len(trust.retiring) == 1:
            return trust.retiring[0]
        raise CAError(f"issuing CAs {known} are in their overlap: name the one to retire"
                      if trust.retiring else "no issuing CA is in its overlap: nothing to retire")
    found = next((r for r in trust.retiring if r.number == number), None)
    if found is None:
        state = "already retired" if paths.retired(number).exists() else "not known"
        raise CAError(f"issuing CA {number} is {state} (in their overlap: {known or 'none'})")
    return found


def retire_issuing(settings: Settings, number: int) -> Issuing:
    """Stop trusting issuing CA *number*: its certificate moves to ``ca/retired/``, its key is
    removed and the chain file drops it (see retiring_issuing for what is refused)."""
    paths = Paths.of(settings)
    issuing = retiring_issuing(settings, number)
    certificate, key = paths.numbered(number)
    private_dir(paths.retired_dir)
    os.replace(certificate, paths.retired(number))
    key.unlink(missing_ok=True)
    write_private(paths.chain, load_trust(settings).chain_pem().encode())
    return Issuing(number, issuing.certificate, IssuingState.RETIRED)



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
                and authority_key_id(current) == key_identifier(ca.issuing.public_key())
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


def _server_hostnames(paths: Paths) -> tuple[str, ...] | None:
    """The names of the current server certificate, in order (None without one)."""
    try:
        current = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return tuple(str(name.value) for name in names
                 if isinstance(name, x509.DNSName | x509.IPAddress)) or None


def root_fingerprint(ca: CA) -> str:
    from fleet.pki import fingerprint_sha256

    return fingerprint_sha256(ca.root)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
