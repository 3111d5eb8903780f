"""Append-only event rows: audit events and the revocation events the broker and the hooks
follow (polled; announced with NOTIFY on PostgreSQL, see fleet.registry.notify)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import overload

from sqlalchemy import insert, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select, update

from fleet.registry.engine import execute
from fleet.registry.models import AuditEvent, CRLState, RevocationEvent
from fleet.registry.notify import announce


def record_audit(
    *,
    session: Session,
    now: datetime,
    action: str,
    outcome: str,
    actor: str,
    device_id: str | None = None,
    serial: str | None = None,
    reason: str | None = None,
    detail: Mapping[str, object] | None = None,
) -> AuditEvent:
    """Append an audit event to the chain (or, while *session* is ``deferred``, to its list)."""
    event = AuditEvent(
        at=now, action=_fit(action, 64), outcome=_fit(outcome, 16), actor=_fit(actor, 128),
        device_id=_fit(device_id, 64), serial=_fit(serial, 40), reason=_fit(reason, 512),
        detail=json.dumps(dict(detail), sort_keys=True, default=str) if detail else None,
    )
    pending = session.info.get(_DEFERRED)
    if pending is not None:
        pending.append(event)
    else:
        _append_audit(session, [event])
    return event


Event = AuditEvent | RevocationEvent
_DEFERRED = "fleet.events.deferred"


@contextmanager
def deferred(session: Session) -> Iterator[list[Event]]:
    """Collect the events recorded on *session* in the list yielded instead of writing them;
    ``append_events`` writes them later, in the same transaction.

    A transaction shared by several operations (fleet.authority.commits) appends every
    event at its end: the locks that keep the audit chain and the revocation ids in line
    (PostgreSQL) are then taken last, once per transaction, after every row lock, as a single
    operation takes them, so two such transactions cannot deadlock over them.
    """
    outer = session.info.get(_DEFERRED)
    events: list[Event] = []
    session.info[_DEFERRED] = events
    try:
        yield events
    finally:
        if outer is None:
            del session.info[_DEFERRED]
        else:
            session.info[_DEFERRED] = outer


def append_events(session: Session, events: Sequence[Event]) -> None:
    """Write deferred events in their order: the revocation events, then the audit events."""
    for event in events:
        if isinstance(event, RevocationEvent):
            _append_revocation(session, event)
    audit = [event for event in events if isinstance(event, AuditEvent)]
    if audit:
        _append_audit(session, audit)


def _append_audit(session: Session, events: Sequence[AuditEvent]) -> None:
    previous = _chain_head(session)
    for event in events:
        event.digest = previous = audit_digest(previous, event)
    if len(events) == 1:
        inserted = execute(session, _AUDIT_INSERT, **events[0].model_dump(exclude={"id"}))
        events[0].id = inserted.inserted_primary_key[0] if inserted.inserted_primary_key \
            else None
    else:
        session.connection().execute(_AUDIT_INSERT,
                                     [event.model_dump(exclude={"id"}) for event in events])


_AUDIT_TABLE = AuditEvent.__table__  # type: ignore[attr-defined]
_AUDIT_INSERT = insert(_AUDIT_TABLE)
_AUDIT_HEAD = sa_select(_AUDIT_TABLE.c.id, _AUDIT_TABLE.c.digest) \
    .order_by(_AUDIT_TABLE.c.id.desc()).limit(1)


AUDIT_GENESIS = "0" * 64
_AUDIT_LOCK_KEY = 0x466C656574417564  # pg_advisory_xact_lock key of the audit chain


def audit_digest(previous: str, event: AuditEvent) -> str:
    """SHA-256 over the previous event's digest and this event's content: a hash chain."""
    content = json.dumps(
        [previous, event.at.isoformat(), event.action, event.outcome, event.actor,
         event.device_id, event.serial, event.reason, event.detail],
        separators=(",", ":"),
    )
    return hashlib.sha256(content.encode()).hexdigest()


def _chain_head(session: Session) -> str:
    """The newest digest, with the chain held until commit so appends stay in a line.

    SQLite write transactions are already serial (BEGIN IMMEDIATE); PostgreSQL takes a
    transaction-scoped advisory lock, acquired here, at the last step of an operation.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql(f"SELECT pg_advisory_xact_lock({_AUDIT_LOCK_KEY})")
    head = audit_head(session=session)
    return head[1] if head else AUDIT_GENESIS


def audit_head(*, session: Session) -> tuple[int, str] | None:
    """The id and digest of the newest audit event (None while the log is empty)."""
    row = execute(session, _AUDIT_HEAD).first()
    return (row.id, row.digest) if row else None


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """What a walk of the audit log found."""

    events: int
    """Events that match the chain, counted up to the first that does not."""
    problem: str | None
    """What is wrong with the first event that does not match (None: every event matches)."""
    first_bad: int | None
    """That event's id."""
    last_id: int
    """The id of the newest event (0: the log is empty)."""
    digests: Mapping[int, str]
    """The stored digest of each asked-for event id that exists."""


def verify_audit_chain(*, session: Session, positions: Set[int] = frozenset(),
                       batch: int = 5000) -> ChainCheck:
    """Walk the whole audit log in order, noting the digests stored at *positions*."""
    previous = AUDIT_GENESIS
    checked, problem, first_bad, last_id = 0, None, None, 0
    digests: dict[int, str] = {}
    for event in _all_events(session, batch):
        last_id = event.id or last_id
        if last_id in positions and event.digest:
            digests[last_id] = event.digest
        if problem is None and event.digest != audit_digest(previous, event):
            first_bad, problem = event.id, (
                f"audit event {event.id} ({event.action} at {event.at.isoformat()}) does not "
                "match the chain: it, or an event before it, was changed, removed or inserted"
            )
        elif problem is None:
            checked += 1
        previous = event.digest or AUDIT_GENESIS
    return ChainCheck(events=checked, problem=problem, first_bad=first_bad, last_id=last_id,
                      digests=digests)


def _all_events(session: Session, batch: int) -> Iterator[AuditEvent]:
    last_id = 0
    while True:
        rows = session.exec(
            select(AuditEvent).where(col(AuditEvent.id) > last_id)
            .order_by(col(AuditEvent.id)).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id or last_id


@overload
def _fit(value: str, limit: int) -> str: ...


@overload
def _fit(value: None, limit: int) -> None: ...


def _fit(value: str | None, limit: int) -> str | None:
    """Refusals quote what a caller sent: an audit row must fit its column and hold no NUL."""
    return value.replace("\x00", "\\x00")[:limit] if value else value


def list_audit(
    *, session: Session, since: datetime | None = None, device_id: str | None = None,
    action: str | None = None, limit: int | None = None,
) -> Sequence[AuditEvent]:
    """Audit events, oldest first; *action* selects that action and its family (``device``:
    ``device.revoke``, ``device.suspend``, ...)."""
    statement = select(AuditEvent).order_by(col(AuditEvent.id))
    if since:
        statement = statement.where(AuditEvent.at >= since)
    if device_id:
        statement = statement.where(AuditEvent.device_id == device_id)
    if action:
        statement = statement.where(or_(
            col(AuditEvent.action) == action,
            col(AuditEvent.action).startswith(action + ".", autoescape=True)))
    if limit:
        statement = statement.limit(limit)
    return session.exec(statement).all()


def recorded_actions(*, session: Session) -> list[str]:
    """Every action the audit log holds, in order."""
    statement = sa_select(_AUDIT_TABLE.c.action).distinct().order_by(_AUDIT_TABLE.c.action)
    return list(execute(session, statement).scalars())


def record_revocation(
    *, session: Session, now: datetime, kind: str, serial: str | None = None,
    device_id: str | None = None,
) -> RevocationEvent:
    """Append a revocation event (or, while *session* is ``deferred``, add it to its list)."""
    event = RevocationEvent(serial=serial, device_id=device_id, kind=kind, created_at=now)
    pending = session.info.get(_DEFERRED)
    if pending is not None:
        pending.append(event)
    else:
        _append_revocation(session, event)
    return event


_REVOCATION_INSERT = insert(RevocationEvent.__table__)  # type: ignore[attr-defined]


def _append_revocation(session: Session, event: RevocationEvent) -> None:
    postgresql = session.get_bind().dialect.name == "postgresql"
    if postgresql:
        # Ids are handed out in call order but transactions commit in any order; a poller that
        # remembers the last id it saw would skip an id committed after a higher one. Writers
        # take turns until commit (readers are not blocked), so id order is commit order.
        session.connection().exec_driver_sql("LOCK TABLE revocation_events IN EXCLUSIVE MODE")
    key = execute(session, _REVOCATION_INSERT,
                  **event.model_dump(exclude={"id"})).inserted_primary_key
    event.id = key[0] if key else None
    if postgresql:
        assert event.id is not None
        announce(session, event.id)  # delivered on commit (fleet.registry.notify)


def revocations_after(
    *, session: Session, after_id: int, limit: int = 1000
) -> Sequence[RevocationEvent]:
    statement = (
        select(RevocationEvent).where(col(RevocationEvent.id) > after_id)
        .order_by(col(RevocationEvent.id)).limit(limit)
    )
    return session.exec(statement).all()


def last_revocation_id(*, session: Session) -> int:
    statement = select(RevocationEvent.id).order_by(col(RevocationEvent.id).desc()).limit(1)
    return session.exec(statement).first() or 0


def next_crl_number(*, session: Session) -> int:
    """Increment and return the CRL number inside the caller's transaction."""
    session.exec(
        update(CRLState).where(col(CRLState.id) == 1)
        .values(crl_number=col(CRLState.crl_number) + 1)
    )
    state = session.exec(select(CRLState).where(CRLState.id == 1)).one()
    session.refresh(state)
    return state.crl_number
