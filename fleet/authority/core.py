"""The shared core of the authority: settings, registry, CA, clock, transactions and audit."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from fleet import pki
from fleet.audit import Aggregate, RefusalDigest
from fleet.authority.commits import GroupCommit, Step, conflict
from fleet.authority.vendor_crl import VendorCrls
from fleet.ca import CA, Trust, crl_path, load_ca
from fleet.errors import (
    CertificateNotActiveError,
    DeviceNotActiveError,
    FleetError,
    InvalidTokenError,
    KeyPolicyError,
    RegistryUnavailableError,
)
from fleet.pki import Identity
from fleet.registry import certificates as certs_db
from fleet.registry import events as events_db
from fleet.registry.engine import unavailable_as_error, write_session
from fleet.registry.models import Certificate, CertificateStatus, Device, DeviceStatus, utcnow
from fleet.settings import Settings
from fleet.tokens import claimed_token_id

if TYPE_CHECKING:
    from fleet.authority.crl import SignedCrl

SERIAL_PATTERN = re.compile(r"[0-9a-f]{1,40}")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate the authority has just issued."""

    certificate: x509.Certificate
    record: Certificate


def serial_hex(serial: int) -> str:
    return format(serial, "x")


class AuthorityCore:
    """What every operation shares: settings, registry, CA, clock, transactions and audit."""

    def __init__(
        self, *, settings: Settings, engine: Engine, ca: CA | None = None,
        trust: Trust | None = None, clock: Callable[[], datetime] = utcnow,
        refusals: RefusalDigest | None = None, commits: GroupCommit | None = None,
    ) -> None:
        """*ca* signs (loaded and unlocked on first use when not given); *trust* alone is
        enough for an Authority that only verifies, such as the broker's. Refusals without a
        verified identity go to *refusals* when given, else one audit event each. With
        *commits*, enrollments and renewals share transactions (group commit)."""
        self.settings = settings
        self.commits = commits
        self.refusals = refusals
        self.engine = engine
        self._ca = ca
        self._trust = trust or ca
        self.clock = clock
        self._crl_lock = threading.Lock()
        self._crl_cache: tuple[int, datetime, tuple[SignedCrl, ...]] | None = None
        self.vendor_crls = VendorCrls()

    @property
    def ca(self) -> CA:
        if self._ca is None:
            self._ca = load_ca(self.settings)
        return self._ca

    @property
    def trust(self) -> Trust:
        return self._trust or self.ca

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One database transaction; commits on success, rolls back on any exception."""
        try:
            with unavailable_as_error(), write_session(self.engine) as session:
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
        except IntegrityError as exc:  # a concurrent transaction got there first
            raise conflict(exc) from exc

    def audit(self, session: Session, **fields: object) -> None:
        events_db.record_audit(session=session, now=self.clock(), **fields)  # type: ignore[arg-type]

    def audit_refusal(
        self, action: str, error: FleetError, *, actor: str, device_id: str | None = None,
        serial: str | None = None,
    ) -> None:
        """Record a refused operation in its own transaction (never raises on a DB outage)."""
        try:
            with self.transaction() as session:
                self._audit_refused(session, action, error, actor=actor, device_id=device_id,
                                    serial=serial)
        except FleetError:
            pass

    def _audit_refused(self, session: Session, action: str, error: FleetError, *, actor: str,
                       device_id: str | None = None, serial: str | None = None) -> None:
        detail = {k: v for k, v in error.context.items() if k not in ("device_id", "serial")}
        self.audit(
            session, action=action, outcome="refused", actor=actor,
            device_id=valid_id_or_none(
                device_id or _str_or_none(error.context.get("device_id"))),
            serial=_valid_serial_or_none(serial or _str_or_none(error.context.get("serial"))),
            reason=f"{type(error).__name__}: {error.message}", detail=detail or None,
        )

    def refused_unverified(self, action: str, error: FleetError, *, actor: str,
                           device_id: str | None = None) -> None:
        """A refusal that proves nothing about the caller (*device_id* is only claimed):
        aggregated when a digest is set, else one audit event."""
        if self.refusals is None:
            self.audit_refusal(action, error, actor=actor, device_id=device_id)
            return
        claimed = valid_id_or_none(device_id)
        self.refusals.add(action, actor=actor, reason=f"{type(error).__name__}: {error.message}",
                          **({"claimed_device_id": claimed} if claimed else {}))

    def record_refusals(self, aggregates: Sequence[Aggregate]) -> None:
        """Write aggregated refusals (see fleet.audit), one audit event each, in one transaction."""
        with self.transaction() as session:
            for aggregate in aggregates:
                self.audit(session, action=aggregate.action, outcome="refused",
                           actor=aggregate.actor, reason=aggregate.reason,
                           detail={**aggregate.detail, "aggregated": True,
                                   "count": aggregate.count,
                                   "first": aggregate.first.isoformat(),
                                   "last": aggregate.last.isoformat()})

    @contextmanager
    def _audited(
        self, action: str, *, actor: str, device_id: str | None = None,
        serial: str | None = None,
    ) -> Iterator[Session]:
        """A transaction whose refusal (a FleetError) is audited after the rollback."""
        try:
            with self.transaction() as session:
                yield session
        except FleetError as error:
            if isinstance(error, InvalidTokenError):
                self.refused_unverified(action, error, actor=actor, device_id=device_id)
            elif not isinstance(error, RegistryUnavailableError):
                self.audit_refusal(action, error, actor=actor, device_id=device_id,
                                   serial=serial)
            raise

    def _apply(self, action: str, step: Step[T], *, actor: str, device_id: str | None = None,
               serial: str | None = None) -> T:
        """Run *step* in a transaction of its own, or with group commit (``commits``) in one
        shared with concurrent operations; a refusal is audited either way."""
        if self.commits is None:
            with self._audited(action, actor=actor, device_id=device_id,
                               serial=serial) as session:
                return step(session)

        def refused(session: Session, error: FleetError) -> None:
            if isinstance(error, InvalidTokenError) and self.refusals is not None:
                self.refused_unverified(action, error, actor=actor, device_id=device_id)
            elif not isinstance(error, RegistryUnavailableError):
                self._audit_refused(session, action, error, actor=actor, device_id=device_id,
                                    serial=serial)

        return self.commits.apply(step, refused=refused)

    def _sign(self, identity: Identity, public_key: CertificatePublicKeyTypes,
              lifetime: timedelta, now: datetime) -> x509.Certificate:
        profile = pki.identity_profile(
            identity, trust_domain=self.settings.trust_domain, lifetime=lifetime,
            organization=self.settings.organization or None,
            public_base_url=self.settings.public_base_url or None,
            crl_path=crl_path(self.ca.number),
        )
        return pki.issue_certificate(profile=profile, public_key=public_key,
                                     issuer_key=self.ca.issuing_key, issuer=self.ca.issuing,
                                     now=now)

    def _record(self, session: Session, cert: x509.Certificate, identity: Identity,
                now: datetime, replaces: str | None = None) -> Certificate:
        row = Certificate(
            serial=serial_hex(cert.serial_number),
            device_id=identity.name if identity.kind == "device" else None,
            service=identity.name if identity.kind == "service" else None,
            fingerprint_sha256=pki.fingerprint_sha256(cert),
            spki_sha256=pki.spki_sha256(cert.public_key()),
            authority_key_id=pki.authority_key_id(cert),
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            status=CertificateStatus.ACTIVE, issued_at=now, replaces=replaces,
            pem=pki.certificate_pem(cert),
        )
        return certs_db.add_certificate(session=session, certificate=row)


def require_registered(cert: x509.Certificate, identity: Identity, fingerprint: str | None,
                       status: str | None) -> None:
    """This exact certificate (by fingerprint) is in the registry and not revoked."""
    serial = serial_hex(cert.serial_number)
    if fingerprint is None or fingerprint != pki.fingerprint_sha256(cert):
        raise CertificateNotActiveError(f"certificate {serial} is not in the registry",
                                        serial=serial, device_id=identity.name)
    if status == CertificateStatus.REVOKED:
        raise CertificateNotActiveError(f"certificate {serial} is revoked",
                                        serial=serial, device_id=identity.name)


def require_key_not_compromised(session: Session, public_key: CertificatePublicKeyTypes,
                                device_id: str) -> None:
    """A key revoked for keyCompromise is never certified again: a new key is needed."""
    if certs_db.key_compromised(session=session, spki_sha256=pki.spki_sha256(public_key)):
        raise key_compromised(device_id)


def key_compromised(device_id: str) -> KeyPolicyError:
    """The refusal of a public key revoked for keyCompromise."""
    return KeyPolicyError("this public key was revoked for keyCompromise; generate a new key "
                          "(and enroll with a new token)", device_id=device_id)


def require_enrollable(device: Device) -> None:
    if device.status in (DeviceStatus.REVOKED, DeviceStatus.SUSPENDED):
        raise DeviceNotActiveError(f"device {device.id} is {device.status}",
                                   device_id=device.id)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _valid_serial_or_none(value: str | None) -> str | None:
    return value if value and SERIAL_PATTERN.fullmatch(value) else None


def valid_id_or_none(value: str | None) -> str | None:
    """*value* if it can be a device id; never something shaped like a token (a secret)."""
    if not value or claimed_token_id(value) is not None:
        return None
    return value if pki.DEVICE_ID_PATTERN.fullmatch(value) else None
