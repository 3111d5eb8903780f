"""Broker admission: may this certificate, with this CONNECT, be on the broker right now.

Admission is one list of small checks, ``ADMISSION_CHECKS``, run in order until the first one
fails: the TLS stage (issuer, validity, key usage), then the CONNECT (identity, client id, the
client id's session, revocation state, registry status, superseded grace, will). The CONNECT
gate decides every connection with it and ``fleet diagnose`` shows each outcome of the same
list. A check names what the client is told when it fails: a TLS-stage check fails the
handshake (and, should it fail only after the handshake, CONNACK 0x05); a CONNECT check
answers with its CONNACK return code, except that an unreachable registry is always 0x03
(server unavailable).

The issuer check accepts any issuing CA in use: the active one and those in their overlap
after a rotation (``fleet.ca.Trust.issuers``), never a retired one, even when the client
sends the retired CA's certificate along with its own.

Revocation state: a broker that has not confirmed it (no successful poll of the revocation
events) for longer than ``broker.revocation_max_staleness`` fails closed and refuses new
connections with 0x03 until a poll succeeds, before asking the registry anything.

The registry check reads the certificate's facts (``AdmissionPolicy.admission_facts``) unless
the caller passes a lookup in its place: the broker's admission cache
(fleet.broker.admission_cache), which the revocation events keep current. The checks are the
same either way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from sqlalchemy.engine import Row

from fleet import pki
from fleet.acl import NOTHING, Grants, Policy
from fleet.authority.core import AuthorityCore, require_registered, serial_hex
from fleet.errors import (
    CertificateNotActiveError,
    DeviceNotActiveError,
    FleetError,
    ForbiddenError,
    IdentityError,
    RegistryUnavailableError,
)
from fleet.pki import Identity
from fleet.pki.identity import client_id_problem
from fleet.registry import certificates as certs_db
from fleet.registry import events as events_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import CertificateStatus, DeviceStatus, RevocationEvent


class ConnectReturnCode(enum.IntEnum):
    """The CONNACK return codes of MQTT 3.1.1 (table 3.1)."""

    ACCEPTED = 0x00
    UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    IDENTIFIER_REJECTED = 0x02
    SERVER_UNAVAILABLE = 0x03
    BAD_USER_NAME_OR_PASSWORD = 0x04
    NOT_AUTHORIZED = 0x05

    def describe(self) -> str:
        return f"0x{self.value:02x} {self.name.lower().replace('_', ' ')}"


class Stage(enum.StrEnum):
    TLS = "tls"
    CONNECT = "connect"


class Result(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Admission:
    """Who a live TLS connection is, as the broker needs it."""

    identity: Identity
    group: str | None
    serial: str
    usable_until: datetime
    """notAfter, or for a superseded certificate the end of its grace, if sooner."""
    superseded: bool = False
    grants: Grants = NOTHING
    """What the policy given to the admission grants (nothing without one)."""


@dataclass(slots=True)
class Candidate:
    """One connection being admitted, and what the checks learn about it on the way."""

    certificate: x509.Certificate
    now: datetime
    chain_verified: bool = False
    """The TLS handshake already verified the signature chain to the fleet CA."""
    client_id: str | None = None
    """None: not known (``fleet diagnose`` without --client-id)."""
    will_topic: str | None = None
    sessions_known: bool = False
    """Whether *session_holder* is known (the broker knows; ``fleet diagnose`` does not)."""
    session_holder: Identity | None = None
    """The identity holding *client_id* on the broker, live or as a stored session."""
    revocations_confirmed_at: datetime | None = None
    """When the broker last confirmed revocation state (its last successful poll); None: not
    known (``fleet diagnose``)."""
    policy: Policy | None = None
    lookup: FactsLookup | None = None
    """Where the registry check reads the facts (None: the registry itself)."""
    identity: Identity | None = None
    facts: Row[Any] | None = None
    usable_until: datetime | None = None
    superseded: bool = False
    grants: Grants = field(default=NOTHING)

    @property
    def serial(self) -> str:
        return serial_hex(self.certificate.serial_number)

    @property
    def device_id(self) -> str | None:
        identity = self.identity
        return identity.name if identity is not None and identity.kind == "device" else None

    def admission(self) -> Admission:
        assert self.identity is not None
        assert self.facts is not None
        assert self.usable_until is not None
        return Admission(identity=self.identity, group=self.facts.device_group,
                         serial=self.serial, usable_until=self.usable_until,
                         superseded=self.superseded, grants=self.grants)


@dataclass(frozen=True, slots=True)
class Skip:
    """A check that does not apply to this candidate, and why."""

    detail: str


FactsLookup = Callable[[str], "Row[Any] | None"]
"""The registry's admission facts of a certificate serial (None: the registry has no such
certificate): ``AdmissionPolicy.admission_facts`` or a cache in front of it."""

Run = Callable[["AdmissionPolicy", Candidate], "str | Skip"]
"""A check: the detail of its pass, or Skip; a failure raises FleetError."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    stage: Stage
    refusal: ConnectReturnCode
    run: Run

    def connack(self, error: FleetError) -> ConnectReturnCode:
        if isinstance(error, RegistryUnavailableError):
            return ConnectReturnCode.SERVER_UNAVAILABLE
        return self.refusal


@dataclass(frozen=True, slots=True)
class Outcome:
    check: Check
    result: Result
    detail: str
    error: FleetError | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of every check, up to the first failure (the rest are not reached)."""

    outcomes: tuple[Outcome, ...]
    admission: Admission | None

    @property
    def refusal(self) -> Outcome | None:
        last = self.outcomes[-1] if self.outcomes else None
        return last if last is not None and last.result is Result.FAIL else None

    @property
    def connack(self) -> ConnectReturnCode:
        refusal = self.refusal
        if refusal is None:
            return ConnectReturnCode.ACCEPTED
        assert refusal.error is not None
        return refusal.check.connack(refusal.error)


def _issuer(authority: AdmissionPolicy, c: Candidate) -> str:
    problem = pki.issuer_problem(c.certificate, authority.trust.issuer_certificates,
                                 signature_verified=c.chain_verified)
    if problem is not None:
        raise CertificateNotActiveError(problem[1], serial=c.serial, verdict=problem[0].value)
    return f"signed by {c.certificate.issuer.rfc4514_string()}"


def _validity(authority: AdmissionPolicy, c: Candidate) -> str:
    problem = pki.validity_problem(c.certificate, c.now)
    if problem is not None:
        raise CertificateNotActiveError(problem[1], serial=c.serial, verdict=problem[0].value)
    return f"valid until {c.certificate.not_valid_after_utc.isoformat()}"


def _key_usage(authority: AdmissionPolicy, c: Candidate) -> str:
    problem = pki.usage_problem(c.certificate)
    if problem is not None:
        raise CertificateNotActiveError(problem, serial=c.serial)
    return "clientAuth"


def _identity(authority: AdmissionPolicy, c: Candidate) -> str:
    c.identity = pki.identity_from_certificate(c.certificate, authority.settings.trust_domain)
    return str(c.identity)


def _client_id(authority: AdmissionPolicy, c: Candidate) -> str | Skip:
    assert c.identity is not None
    if c.client_id is None:
        return Skip(f"not given; the broker requires client id {c.identity.name!r}"
                    + (" or one of its service client ids" if c.identity.kind == "service"
                       else ""))
    problem = client_id_problem(c.identity, c.client_id)
    if problem is not None:
        raise IdentityError(problem, device_id=c.device_id, client_id=c.client_id)
    return f"{c.client_id!r} matches the certificate"


def _session(authority: AdmissionPolicy, c: Candidate) -> str | Skip:
    if c.client_id is None or not c.sessions_known:
        return Skip("only the running broker knows who holds a client id")
    holder = c.session_holder
    if holder is not None and holder != c.identity:
        raise IdentityError(f"client id {c.client_id!r} belongs to a session of {holder}",
                            device_id=c.device_id, client_id=c.client_id)
    return "held by no other identity"


def _revocation_state(authority: AdmissionPolicy, c: Candidate) -> str | Skip:
    confirmed_at = c.revocations_confirmed_at
    if confirmed_at is None:
        return Skip("only the running broker knows when it last confirmed revocation state")
    problem = authority.revocation_state_problem(confirmed_at, c.now)
    if problem is not None:
        raise RegistryUnavailableError(problem, serial=c.serial, device_id=c.device_id)
    return f"confirmed {(c.now - confirmed_at).total_seconds():.1f}s ago"


def _registry(authority: AdmissionPolicy, c: Candidate) -> str:
    identity = c.identity
    assert identity is not None
    facts = (c.lookup or authority.admission_facts)(c.serial)
    require_registered(c.certificate, identity, facts.fingerprint_sha256 if facts else None,
                       facts.status if facts else None)
    assert facts is not None
    if identity.kind == "device" and (facts.device_id != identity.name
                                      or facts.device_status != DeviceStatus.ACTIVE):
        status = facts.device_status or "unknown"
        raise DeviceNotActiveError(f"device {identity.name} is {status}",
                                   device_id=identity.name, serial=c.serial)
    if identity.kind == "service" and facts.service != identity.name:
        raise CertificateNotActiveError(f"certificate {c.serial} is not {identity}'s",
                                        serial=c.serial)
    c.facts = facts
    group = f" in group {facts.device_group}" if facts.device_group else ""
    return f"{identity} is active{group}"


def _grace(authority: AdmissionPolicy, c: Candidate) -> str:
    facts = c.facts
    assert facts is not None
    c.usable_until = facts.not_after
    c.superseded = facts.status == CertificateStatus.SUPERSEDED
    if not c.superseded:
        return "not superseded"
    cutoff = authority.superseded_cutoff(facts.superseded_at or c.now)
    if c.now >= cutoff:
        raise CertificateNotActiveError(
            f"certificate {c.serial} was superseded by a renewal; its grace ended at "
            f"{cutoff.isoformat()}", serial=c.serial, device_id=facts.device_id)
    c.usable_until = min(facts.not_after, cutoff)
    return f"superseded by a renewal; usable until {cutoff.isoformat()}"


def _will(authority: AdmissionPolicy, c: Candidate) -> str | Skip:
    identity = c.identity
    assert identity is not None
    assert c.facts is not None
    if c.policy is not None:
        c.grants = c.policy.grants(role=identity.kind, device_id=c.device_id,
                                   group=c.facts.device_group)
    if c.will_topic is None:
        return Skip("no will")
    if c.policy is None:
        return Skip("no topic policy given")
    if not c.grants.may_publish(c.will_topic):
        raise ForbiddenError(f"{identity} may not publish its will to {c.will_topic!r}",
                             device_id=c.device_id, topic=c.will_topic)
    return f"{identity} may publish its will to {c.will_topic!r}"


_NOT_AUTHORIZED = ConnectReturnCode.NOT_AUTHORIZED
ADMISSION_CHECKS: tuple[Check, ...] = (
    Check("issuer", Stage.TLS, _NOT_AUTHORIZED, _issuer),
    Check("validity", Stage.TLS, _NOT_AUTHORIZED, _validity),
    Check("key usage", Stage.TLS, _NOT_AUTHORIZED, _key_usage),
    Check("identity", Stage.CONNECT, _NOT_AUTHORIZED, _identity),
    Check("client id", Stage.CONNECT, ConnectReturnCode.IDENTIFIER_REJECTED, _client_id),
    Check("session", Stage.CONNECT, ConnectReturnCode.IDENTIFIER_REJECTED, _session),
    Check("revocation state", Stage.CONNECT, ConnectReturnCode.SERVER_UNAVAILABLE,
          _revocation_state),
    Check("registry", Stage.CONNECT, _NOT_AUTHORIZED, _registry),
    Check("grace", Stage.CONNECT, _NOT_AUTHORIZED, _grace),
    Check("will", Stage.CONNECT, _NOT_AUTHORIZED, _will),
)


class AdmissionPolicy(AuthorityCore):
    """Whether a certificate may be on the broker, and the revocation feed brokers follow."""

    def assess(self, certificate: x509.Certificate, *, chain_verified: bool = False,
               client_id: str | None = None, will_topic: str | None = None,
               sessions_known: bool = False, session_holder: Identity | None = None,
               revocations_confirmed_at: datetime | None = None,
               policy: Policy | None = None, lookup: FactsLookup | None = None) -> Decision:
        """Run ``ADMISSION_CHECKS`` on this connection, now, up to the first failure (see
        Candidate for the arguments)."""
        candidate = Candidate(certificate=certificate, now=self.clock(),
                              chain_verified=chain_verified, client_id=client_id,
                              will_topic=will_topic, sessions_known=sessions_known,
                              session_holder=session_holder,
                              revocations_confirmed_at=revocations_confirmed_at, policy=policy,
                              lookup=lookup)
        outcomes = tuple(self._outcomes(candidate))
        failed = outcomes[-1].result is Result.FAIL
        return Decision(outcomes, None if failed else candidate.admission())

    def _outcomes(self, candidate: Candidate) -> Iterator[Outcome]:
        for check in ADMISSION_CHECKS:
            try:
                detail = check.run(self, candidate)
            except FleetError as error:
                yield Outcome(check, Result.FAIL, error.message, error)
                return
            if isinstance(detail, Skip):
                yield Outcome(check, Result.SKIP, detail.detail)
            else:
                yield Outcome(check, Result.OK, detail)

    def admit(self, *, certificate: x509.Certificate, chain_verified: bool = False) -> Admission:
        """May this certificate be on the broker right now? Raises the first check's error.

        *chain_verified*: the TLS handshake already checked the signature chain to the fleet
        CA, so it is not verified again; the registry must still know this exact certificate.
        """
        decision = self.assess(certificate, chain_verified=chain_verified)
        refusal = decision.refusal
        if refusal is not None:
            assert refusal.error is not None
            raise refusal.error
        assert decision.admission is not None
        return decision.admission

    def admission_facts(self, serial: str) -> Row[Any] | None:
        """What the registry check decides on for *serial*, read from the registry."""
        with unavailable_as_error(), new_session(self.engine) as session:
            return certs_db.admission_facts(session=session, serial=serial)

    def revocation_state_problem(self, confirmed_at: datetime, now: datetime) -> str | None:
        """Why revocation state last confirmed at *confirmed_at* is too old to admit anyone
        at *now* (None: it is fresh enough)."""
        age = now - confirmed_at
        limit = self.settings.revocation_max_staleness
        if age <= limit:
            return None
        return (f"revocation state not confirmed for {age.total_seconds():.1f}s (more than "
                f"broker.revocation_max_staleness, {limit.total_seconds():g}s): new "
                "connections are refused until a revocation poll succeeds")

    def superseded_cutoff(self, superseded_at: datetime) -> datetime:
        """Until when a certificate superseded at *superseded_at* stays usable."""
        return superseded_at + self.settings.superseded_grace

    def revocations_after(self, after_id: int, *, limit: int = 1000) -> Sequence[RevocationEvent]:
        with unavailable_as_error(), new_session(self.engine) as session:
            return events_db.revocations_after(session=session, after_id=after_id, limit=limit)

    def last_revocation_id(self) -> int:
        with unavailable_as_error(), new_session(self.engine) as session:
            return events_db.last_revocation_id(session=session)
