"""The enrollment and lifecycle policy. Every operation is one transaction plus its audit event.

Refusals roll back whatever the operation had started and are audited in a transaction of
their own, so a refused request changes nothing but the audit log.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from fleet import pki
from fleet.audit import Aggregate, RefusalDigest
from fleet.ca import CA, Trust, load_ca
from fleet.errors import (
    CertificateNotActiveError,
    ConflictError,
    DeviceNotActiveError,
    FleetError,
    ForbiddenError,
    IdentityError,
    InvalidTokenError,
    KeyPolicyError,
    NotFoundError,
    RegistryUnavailableError,
    TokenError,
)
from fleet.pki import Identity
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db
from fleet.registry import events as events_db
from fleet.registry import names as names_db
from fleet.registry import tokens as tokens_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error, write_session
from fleet.registry.models import (
    BootstrapToken,
    Certificate,
    CertificateStatus,
    Device,
    DeviceStatus,
    RevocationEvent,
    utcnow,
)
from fleet.settings import Settings
from fleet.tokens import (
    TOKEN_ID_PATTERN,
    TokenSecret,
    claimed_token_id,
    new_token,
    parse_token,
    secret_matches,
)

MAX_TOKENS_PER_CALL = 100_000
KEY_COMPROMISE = "keyCompromise"
_SERIAL = re.compile(r"[0-9a-f]{1,40}")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly created token; ``token`` is the only copy of the secret."""

    row: BootstrapToken
    token: TokenSecret


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate the authority has just issued."""

    certificate: x509.Certificate
    record: Certificate


@dataclass(frozen=True, slots=True)
class Admission:
    """Who a live TLS connection is, as the broker needs it."""

    identity: Identity
    group: str | None
    serial: str
    usable_until: datetime
    """notAfter, or for a superseded certificate the end of its grace, if sooner."""
    superseded: bool = False


@dataclass(frozen=True, slots=True)
class TokenCredential:
    """What the EST edge extracted from HTTP Basic or Bearer authentication."""

    token: str
    username: str | None = None

    def __repr__(self) -> str:
        return f"TokenCredential(username={self.username!r}, token=***)"


def serial_hex(serial: int) -> str:
    return format(serial, "x")


class Authority:
    """Fleet's CA policy over one registry database."""

    def __init__(
        self, *, settings: Settings, engine: Engine, ca: CA | None = None,
        trust: Trust | None = None, clock: Callable[[], datetime] = utcnow,
        refusals: RefusalDigest | None = None,
    ) -> None:
        """*ca* signs (loaded and unlocked on first use when not given); *trust* alone is
        enough for an Authority that only verifies, such as the broker's. Refusals without a
        verified identity go to *refusals* when given, else one audit event each."""
        self.settings = settings
        self.refusals = refusals
        self.engine = engine
        self._ca = ca
        self._trust = trust or ca
        self.clock = clock
        self._crl_lock = threading.Lock()
        self._crl_cache: tuple[int, datetime, x509.CertificateRevocationList] | None = None

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
            first_line = str(exc.orig).splitlines()[0] if exc.orig is not None else ""
            raise ConflictError(f"the registry changed concurrently; retry ({first_line})") \
                from exc

    def audit(self, session: Session, **fields: object) -> None:
        events_db.record_audit(session=session, now=self.clock(), **fields)  # type: ignore[arg-type]

    def audit_refusal(
        self, action: str, error: FleetError, *, actor: str, device_id: str | None = None,
        serial: str | None = None,
    ) -> None:
        """Record a refused operation in its own transaction (never raises on a DB outage)."""
        detail = {k: v for k, v in error.context.items() if k not in ("device_id", "serial")}
        try:
            with self.transaction() as session:
                self.audit(
                    session, action=action, outcome="refused", actor=actor,
                    device_id=_valid_id_or_none(
                        device_id or _str_or_none(error.context.get("device_id"))),
                    serial=_valid_serial_or_none(
                        serial or _str_or_none(error.context.get("serial"))),
                    reason=f"{type(error).__name__}: {error.message}", detail=detail or None,
                )
        except FleetError:
            pass

    def refused_unverified(self, action: str, error: FleetError, *, actor: str,
                           device_id: str | None = None) -> None:
        """A refusal that proves nothing about the caller (*device_id* is only claimed):
        aggregated when a digest is set, else one audit event."""
        if self.refusals is None:
            self.audit_refusal(action, error, actor=actor, device_id=device_id)
            return
        claimed = _valid_id_or_none(device_id)
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

    def _sign(self, identity: Identity, public_key: CertificatePublicKeyTypes,
              lifetime: timedelta, now: datetime) -> x509.Certificate:
        profile = pki.identity_profile(
            identity, trust_domain=self.settings.trust_domain, lifetime=lifetime,
            organization=self.settings.organization or None,
            public_base_url=self.settings.public_base_url or None,
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
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            status=CertificateStatus.ACTIVE, issued_at=now, replaces=replaces,
            pem=pki.certificate_pem(cert),
        )
        return certs_db.add_certificate(session=session, certificate=row)

    # -- bootstrap tokens -------------------------------------------------------------------

    def create_tokens(
        self, *, group: str, actor: str, device_id: str | None = None, count: int = 1,
        uses: int | None = None, ttl: timedelta | None = None,
    ) -> list[IssuedToken]:
        """Mint *count* tokens for *group*; a device-bound token pre-registers the device."""
        with self._audited("token.create", actor=actor, device_id=device_id) as session:
            pki.check_group_name(group)
            if device_id is not None:
                pki.check_device_id(device_id)
                if count != 1:
                    raise ConflictError("a token bound to a device is created one at a time")
            if not 1 <= count <= MAX_TOKENS_PER_CALL:
                raise ConflictError(f"count must be 1..{MAX_TOKENS_PER_CALL}, got {count}")
            uses = self.settings.token_uses if uses is None else uses
            if uses < 1:
                raise ConflictError(f"uses must be at least 1, got {uses}")
            ttl = self.settings.token_ttl if ttl is None else ttl
            if ttl <= timedelta(0):
                raise ConflictError(f"ttl must be positive, got {ttl}")
            now = self.clock()
            if device_id is not None:
                existing = devices_db.get_device(session=session, device_id=device_id)
                if existing is None:
                    names_db.require_disjoint(session=session,
                                              identity=Identity("device", device_id))
                    devices_db.create_device(session=session, device_id=device_id, group=group,
                                             status=DeviceStatus.PENDING, now=now)
                elif existing.status == DeviceStatus.REVOKED:
                    raise DeviceNotActiveError(f"device {device_id} is revoked",
                                               device_id=device_id)
                elif existing.group != group:
                    raise ConflictError(f"device {device_id} is in group {existing.group!r}, "
                                        f"not {group!r}", device_id=device_id)
            issued = []
            for _ in range(count):
                secret = new_token()
                row = BootstrapToken(
                    id=secret.token_id, secret_hash=secret.secret_hash, group=group,
                    device_id=device_id, uses_left=uses, max_uses=uses,
                    expires_at=now + ttl, created_at=now, created_by=actor,
                )
                issued.append(IssuedToken(row=row, token=secret))
            tokens_db.add_tokens(session=session, tokens=[t.row for t in issued])
            self.audit(session, action="token.create", outcome="ok", actor=actor,
                       device_id=device_id,
                       detail={"group": group, "count": count, "uses": uses,
                               "ttl_seconds": int(ttl.total_seconds()),
                               "ids": [t.row.id for t in issued[:20]]})
        return issued

    def revoke_token(self, *, token_id: str, actor: str) -> BootstrapToken:
        with self._audited("token.revoke", actor=actor) as session:
            row = tokens_db.get_token(session=session, token_id=token_id) \
                if TOKEN_ID_PATTERN.fullmatch(token_id) else None
            if row is None:
                raise NotFoundError(f"unknown token {token_id!r}", token_id=token_id)
            if row.revoked_at is not None:
                raise ConflictError(f"token {token_id} is already revoked", token_id=token_id)
            now = self.clock()
            tokens_db.revoke_tokens(session=session, token_ids=[token_id], now=now)
            self.audit(session, action="token.revoke", outcome="ok", actor=actor,
                       device_id=row.device_id, detail={"token_id": token_id})
            row.revoked_at = now
        return row

    # -- enrollment (RFC 7030 simpleenroll / simplereenroll) --------------------------------

    def enroll(
        self, *, credential: TokenCredential, csr: bytes, actor: str,
        group: str | None = None,
    ) -> Issued:
        """simpleenroll: a bootstrap token authorizes the device named in the CSR.

        *group* is the group an EST label maps to; the token must belong to it.
        """
        device_id: str | None = credential.username or None
        try:
            presented = parse_token(credential.token)
            request = pki.inspect_csr(pki.load_csr(csr))
            if claimed_token_id(request.common_name or "") is not None:
                raise IdentityError("the CSR's CN holds a bootstrap token: put the device id "
                                    "in the CN and the token in the HTTP Basic password")
            device_id = request.common_name
            ident = Identity("device", pki.check_device_id(request.common_name))
            pki.check_requested_identity(request, ident, self.settings.trust_domain)
            if credential.username and credential.username != ident.name:
                raise IdentityError(
                    f"username {credential.username!r} does not match the CSR's "
                    f"CN={ident.name!r}", device_id=ident.name)
        except FleetError as error:  # nothing is verified before the token is checked
            self.refused_unverified("enroll", error, actor=actor,
                                    device_id=_valid_id_or_none(device_id))
            raise
        with self._audited("enroll", actor=actor, device_id=ident.name) as session:
            now = self.clock()
            token = self._check_token(session, presented, now=now)
            if group is not None and token.group != group:
                raise TokenError(f"token is for group {token.group!r}, not {group!r}",
                                 token_id=token.id)
            if token.device_id is not None and token.device_id != ident.name:
                raise IdentityError(
                    f"token is bound to device {token.device_id!r}, the CSR names "
                    f"{ident.name!r}", token_id=token.id)
            device = devices_db.get_device(session=session, device_id=ident.name,
                                           for_update=True)
            if device is not None:
                _require_enrollable(device)
                if token.device_id != device.id:
                    raise _already_registered(device.id)
            if not tokens_db.consume_token_use(session=session, token_id=token.id, now=now):
                raise TokenError("bootstrap token already used", token_id=token.id)
            superseded: list[str] = []
            if device is None:
                names_db.require_disjoint(session=session, identity=ident)
                try:  # another enrollment of the same new device may have committed meanwhile
                    with session.begin_nested():
                        device = devices_db.create_device(session=session, device_id=ident.name,
                                                          group=token.group,
                                                          status=DeviceStatus.ACTIVE, now=now)
                except IntegrityError as exc:
                    raise _already_registered(ident.name) from exc
            else:  # re-provisioning with a token bound to this device
                devices_db.set_device_status(session=session, device=device,
                                             status=DeviceStatus.ACTIVE, reason=None, now=now)
                superseded = certs_db.supersede_active(session=session, device_id=device.id,
                                                       now=now)
            _require_key_not_compromised(session, request.csr.public_key(), ident.name)
            cert = self._sign(ident, request.csr.public_key(),
                              self.settings.device_lifetime, now)
            row = self._record(session, cert, ident, now)
            for old in superseded:
                events_db.record_revocation(session=session, now=now, kind="superseded",
                                            serial=old, device_id=device.id)
            self.audit(session, action="enroll", outcome="ok", actor=actor, device_id=device.id,
                       serial=row.serial,
                       detail={"token_id": token.id, "group": device.group,
                               "key": request.key_name, "superseded": superseded})
        return Issued(cert, row)

    def _check_token(self, session: Session, presented: TokenSecret, *,
                     now: datetime) -> BootstrapToken:
        token = tokens_db.get_token(session=session, token_id=presented.token_id)
        if token is None or not secret_matches(presented, token.secret_hash):
            raise InvalidTokenError("unknown or invalid bootstrap token",
                                    token_id=presented.token_id,
                             reason="unknown" if token is None else "bad-secret")
        if token.revoked_at is not None:
            raise TokenError("bootstrap token has been revoked", token_id=token.id)
        if token.expires_at <= now:
            raise TokenError(f"bootstrap token expired at {token.expires_at.isoformat()}",
                             token_id=token.id)
        if token.uses_left <= 0:
            raise TokenError("bootstrap token already used", token_id=token.id)
        return token

    def reenroll(self, *, client_certificate: x509.Certificate, csr: bytes, actor: str) -> Issued:
        """simplereenroll: the current certificate authorizes its own renewal or rekey."""
        serial = serial_hex(client_certificate.serial_number)
        with self._audited("reenroll", actor=actor, serial=serial) as session:
            now = self.clock()
            verdict = pki.verify_leaf(client_certificate, issuer=self.trust.issuing,
                                      trust_domain=self.settings.trust_domain, now=now)
            if not verdict.ok or verdict.identity is None:
                raise CertificateNotActiveError(f"client certificate refused: {verdict.detail}",
                                                serial=serial, verdict=verdict.reason.value)
            identity = verdict.identity
            if identity.kind != "device":
                raise ForbiddenError(f"{identity} cannot re-enroll over EST", serial=serial)
            record = self._live_record(session, client_certificate, identity)
            if record.status != CertificateStatus.ACTIVE:
                raise CertificateNotActiveError(
                    f"certificate {serial} is {record.status}; only the current certificate "
                    "can be renewed", serial=serial, device_id=identity.name)
            device = devices_db.get_device(session=session, device_id=identity.name,
                                           for_update=True)
            if device is None:
                raise CertificateNotActiveError(f"device {identity.name} is not registered",
                                                device_id=identity.name)
            _require_enrollable(device)
            request = pki.inspect_csr(pki.load_csr(csr))
            if not pki.same_subject_and_san(request.csr, client_certificate):
                raise IdentityError(
                    "CSR subject and subjectAltName must be identical to the certificate being "
                    f"renewed (CN={identity.name})", device_id=identity.name, serial=serial)
            # Only one renewal can win per certificate, even under concurrent requests.
            _require_key_not_compromised(session, request.csr.public_key(), identity.name)
            if not certs_db.supersede_if_active(session=session, serial=serial, now=now):
                raise CertificateNotActiveError(f"certificate {serial} was already renewed",
                                                serial=serial, device_id=identity.name)
            cert = self._sign(identity, request.csr.public_key(),
                              self.settings.device_lifetime, now)
            row = self._record(session, cert, identity, now, replaces=serial)
            # Brokers drop the superseded certificate's connections when its grace ends.
            events_db.record_revocation(session=session, now=now, kind="superseded",
                                        serial=serial, device_id=identity.name)
            rekey = request.csr.public_key() != client_certificate.public_key()
            self.audit(session, action="reenroll", outcome="ok", actor=actor,
                       device_id=identity.name, serial=row.serial,
                       detail={"replaces": serial, "mode": "rekey" if rekey else "renew",
                               "key": request.key_name})
        return Issued(cert, row)

    def _live_record(self, session: Session, cert: x509.Certificate,
                     identity: Identity) -> Certificate:
        record = certs_db.get_certificate(session=session, serial=serial_hex(cert.serial_number))
        _require_registered(cert, identity, record.fingerprint_sha256 if record else None,
                            record.status if record else None)
        assert record is not None
        return record

    # -- broker admission -------------------------------------------------------------------

    def admit(self, *, certificate: x509.Certificate, chain_verified: bool = False) -> Admission:
        """May this certificate be on the broker right now?

        *chain_verified*: the TLS handshake already checked the signature chain to the fleet
        CA, so it is not verified again; the registry must still know this exact certificate.
        """
        now = self.clock()
        verdict = pki.verify_leaf(certificate, issuer=self.trust.issuing,
                                  trust_domain=self.settings.trust_domain, now=now,
                                  signature_verified=chain_verified)
        serial = serial_hex(certificate.serial_number)
        if not verdict.ok or verdict.identity is None:
            raise CertificateNotActiveError(verdict.detail, serial=serial,
                                            verdict=verdict.reason.value)
        identity = verdict.identity
        with unavailable_as_error(), new_session(self.engine) as session:
            facts = certs_db.admission_facts(session=session, serial=serial)
        _require_registered(certificate, identity, facts.fingerprint_sha256 if facts else None,
                            facts.status if facts else None)
        assert facts is not None
        if identity.kind == "device" and (facts.device_id != identity.name
                                          or facts.device_status != DeviceStatus.ACTIVE):
            status = facts.device_status or "unknown"
            raise DeviceNotActiveError(f"device {identity.name} is {status}",
                                       device_id=identity.name, serial=serial)
        if identity.kind == "service" and facts.service != identity.name:
            raise CertificateNotActiveError(f"certificate {serial} is not {identity}'s",
                                            serial=serial)
        usable_until, superseded = facts.not_after, facts.status == CertificateStatus.SUPERSEDED
        if superseded:
            cutoff = self.superseded_cutoff(facts.superseded_at or now)
            if now >= cutoff:
                raise CertificateNotActiveError(
                    f"certificate {serial} was superseded by a renewal; its grace ended at "
                    f"{cutoff.isoformat()}", serial=serial, device_id=facts.device_id)
            usable_until = min(usable_until, cutoff)
        return Admission(identity=identity, group=facts.device_group, serial=serial,
                         usable_until=usable_until, superseded=superseded)

    def superseded_cutoff(self, superseded_at: datetime) -> datetime:
        """Until when a certificate superseded at *superseded_at* stays usable."""
        return superseded_at + self.settings.superseded_grace

    def revocations_after(self, after_id: int, *, limit: int = 1000) -> Sequence[RevocationEvent]:
        with unavailable_as_error(), new_session(self.engine) as session:
            return events_db.revocations_after(session=session, after_id=after_id, limit=limit)

    def last_revocation_id(self) -> int:
        with unavailable_as_error(), new_session(self.engine) as session:
            return events_db.last_revocation_id(session=session)

    # -- lifecycle (operators) --------------------------------------------------------------

    def revoke_device(self, *, device_id: str, reason: str, actor: str) -> Device:
        """Revoke every certificate and unused token of a device; it can never enroll again."""
        with self._audited("device.revoke", actor=actor, device_id=device_id) as session:
            pki.check_reason(reason)
            device = self._device(session, device_id)
            if device.status == DeviceStatus.REVOKED:
                raise ConflictError(f"device {device_id} is already revoked",
                                    device_id=device_id)
            now = self.clock()
            serials = certs_db.unrevoked_serials(session=session, device_id=device_id)
            certs_db.revoke_certificates(session=session, serials=serials, reason=reason, now=now)
            token_ids = tokens_db.unused_tokens_for_device(session=session, device_id=device_id)
            tokens_db.revoke_tokens(session=session, token_ids=token_ids, now=now)
            devices_db.set_device_status(session=session, device=device,
                                         status=DeviceStatus.REVOKED, reason=reason, now=now)
            events_db.record_revocation(session=session, now=now, kind="revoked",
                                        device_id=device_id)
            self.audit(session, action="device.revoke", outcome="ok", actor=actor,
                       device_id=device_id, reason=reason,
                       detail={"serials": serials, "tokens": token_ids})
        self._crl_cache = None
        return device

    def revoke_certificate(self, *, serial: str, reason: str, actor: str) -> Certificate:
        serial = serial.lower().replace(":", "")
        with self._audited("cert.revoke", actor=actor, serial=serial) as session:
            pki.check_reason(reason)
            record = certs_db.get_certificate(session=session, serial=serial) \
                if _SERIAL.fullmatch(serial) else None
            if record is None:
                raise NotFoundError(f"unknown certificate serial {serial!r}", serial=serial)
            if record.status == CertificateStatus.REVOKED:
                raise ConflictError(f"certificate {serial} is already revoked", serial=serial)
            now = self.clock()
            revoked = [record]
            if reason == KEY_COMPROMISE and record.spki_sha256:
                # Every certificate of the key, active or superseded, is as compromised.
                revoked += [other for other in certs_db.unrevoked_with_key(
                    session=session, spki_sha256=record.spki_sha256) if other.serial != serial]
            serials = [row.serial for row in revoked]
            certs_db.revoke_certificates(session=session, serials=serials, reason=reason,
                                         now=now)
            for row in revoked:
                events_db.record_revocation(session=session, now=now, kind="revoked",
                                            serial=row.serial, device_id=row.device_id)
            self.audit(session, action="cert.revoke", outcome="ok", actor=actor,
                       device_id=record.device_id, serial=serial, reason=reason,
                       detail={"same_key": serials[1:]} if len(serials) > 1 else None)
            record.status, record.revoked_at, record.revocation_reason = (
                CertificateStatus.REVOKED, now, reason)
        self._crl_cache = None
        return record

    def suspend_device(self, *, device_id: str, actor: str, reason: str | None = None) -> Device:
        with self._audited("device.suspend", actor=actor, device_id=device_id) as session:
            device = self._device(session, device_id)
            if device.status != DeviceStatus.ACTIVE:
                raise ConflictError(f"device {device_id} is {device.status}, not active",
                                    device_id=device_id)
            now = self.clock()
            devices_db.set_device_status(session=session, device=device,
                                         status=DeviceStatus.SUSPENDED, reason=reason, now=now)
            events_db.record_revocation(session=session, now=now, kind="suspended",
                                        device_id=device_id)
            self.audit(session, action="device.suspend", outcome="ok", actor=actor,
                       device_id=device_id, reason=reason)
        return device

    def resume_device(self, *, device_id: str, actor: str) -> Device:
        with self._audited("device.resume", actor=actor, device_id=device_id) as session:
            device = self._device(session, device_id)
            if device.status != DeviceStatus.SUSPENDED:
                raise ConflictError(f"device {device_id} is {device.status}, not suspended",
                                    device_id=device_id)
            devices_db.set_device_status(session=session, device=device,
                                         status=DeviceStatus.ACTIVE, reason=None,
                                         now=self.clock())
            self.audit(session, action="device.resume", outcome="ok", actor=actor,
                       device_id=device_id)
        return device

    def _device(self, session: Session, device_id: str) -> Device:
        # An id that cannot exist is not looked up (PostgreSQL refuses NUL bytes in a query).
        device = devices_db.get_device(session=session, device_id=device_id, for_update=True) \
            if pki.DEVICE_ID_PATTERN.fullmatch(device_id) else None
        if device is None:
            raise NotFoundError(f"unknown device {device_id!r}", device_id=device_id)
        return device

    def issue_service_certificate(
        self, *, name: str, public_key: CertificatePublicKeyTypes, actor: str,
    ) -> Issued:
        """A certificate for a backend service (``spiffe://<domain>/service/<name>``)."""
        with self._audited("service.issue", actor=actor) as session:
            identity = Identity("service", pki.check_service_name(name))
            key_name = pki.check_key_policy(public_key)
            names_db.require_disjoint(session=session, identity=identity)
            now = self.clock()
            cert = self._sign(identity, public_key, self.settings.service_lifetime, now)
            row = self._record(session, cert, identity, now)
            self.audit(session, action="service.issue", outcome="ok", actor=actor,
                       serial=row.serial, detail={"service": name, "key": key_name})
        return Issued(cert, row)

    # -- CRL --------------------------------------------------------------------------------

    def current_crl(self) -> x509.CertificateRevocationList:
        """The CRL, rebuilt (with a new, higher CRL number) only when something changed."""
        with self._crl_lock:
            last_event = self.last_revocation_id()
            now = self.clock()
            cached = self._crl_cache
            if cached and cached[0] == last_event and now < cached[1]:
                return cached[2]
            crl = self.build_crl()
            refresh_at = now + self.settings.crl_next_update / 2
            with unavailable_as_error(), new_session(self.engine) as session:
                cutoff = certs_db.next_supersession_cutoff(
                    session=session, now=now, grace=self.settings.superseded_grace)
            if cutoff is not None:  # a grace ends before then: that certificate joins the CRL
                refresh_at = min(refresh_at, cutoff)
            self._crl_cache = (last_event, refresh_at, crl)
            return crl

    def build_crl(self) -> x509.CertificateRevocationList:
        """Sign a fresh CRL with the next CRL number."""
        with self.transaction() as session:
            now = self.clock()
            number = events_db.next_crl_number(session=session)
            revoked = [
                pki.RevokedEntry(int(row.serial, 16), row.revoked_at or now,
                                 row.revocation_reason or "unspecified")
                for row in certs_db.revoked_certificates(session=session, now=now)
            ] + [  # superseded past their grace: other relying parties refuse them too
                pki.RevokedEntry(int(row.serial, 16),
                                 self.superseded_cutoff(row.superseded_at or now), "superseded")
                for row in certs_db.superseded_since(
                    session=session, now=now, before=now - self.settings.superseded_grace)
            ]
            return pki.build_crl(issuer=self.ca.issuing, issuer_key=self.ca.issuing_key,
                                 revoked=revoked, crl_number=number, now=now,
                                 next_update=self.settings.crl_next_update)


def _already_registered(device_id: str) -> ForbiddenError:
    return ForbiddenError(
        f"device {device_id} is already registered; renew with its certificate "
        "(simplereenroll) or use a token bound to it", device_id=device_id)


def _require_registered(cert: x509.Certificate, identity: Identity, fingerprint: str | None,
                        status: str | None) -> None:
    """This exact certificate (by fingerprint) is in the registry and not revoked."""
    serial = serial_hex(cert.serial_number)
    if fingerprint is None or fingerprint != pki.fingerprint_sha256(cert):
        raise CertificateNotActiveError(f"certificate {serial} is not in the registry",
                                        serial=serial, device_id=identity.name)
    if status == CertificateStatus.REVOKED:
        raise CertificateNotActiveError(f"certificate {serial} is revoked",
                                        serial=serial, device_id=identity.name)


def _require_key_not_compromised(session: Session, public_key: CertificatePublicKeyTypes,
                                 device_id: str) -> None:
    """A key revoked for keyCompromise is never certified again: a new key is needed."""
    if certs_db.key_compromised(session=session, spki_sha256=pki.spki_sha256(public_key)):
        raise KeyPolicyError("this public key was revoked for keyCompromise; generate a new key "
                             "(and enroll with a new token)", device_id=device_id)


def _require_enrollable(device: Device) -> None:
    if device.status in (DeviceStatus.REVOKED, DeviceStatus.SUSPENDED):
        raise DeviceNotActiveError(f"device {device.id} is {device.status}",
                                   device_id=device.id)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _valid_serial_or_none(value: str | None) -> str | None:
    return value if value and _SERIAL.fullmatch(value) else None


def _valid_id_or_none(value: str | None) -> str | None:
    """*value* if it can be a device id; never something shaped like a token (a secret)."""
    if not value or claimed_token_id(value) is not None:
        return None
    return value if pki.DEVICE_ID_PATTERN.fullmatch(value) else None
