"""Append-only event rows: audit events and the revocation events the broker polls."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlmodel import Session, col, select, update

from fleet.registry.models import AuditEvent, CRLState, RevocationEvent


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
    event = AuditEvent(
        at=now, action=action, outcome=outcome, actor=actor, device_id=device_id,
        serial=serial, reason=reason[:512] if reason else None,
        detail=json.dumps(dict(detail), sort_keys=True, default=str) if detail else None,
    )
    session.add(event)
    session.flush()
    return event


def list_audit(
    *, session: Session, since: datetime | None = None, device_id: str | None = None,
    action: str | None = None, limit: int | None = None,
) -> Sequence[AuditEvent]:
    statement = select(AuditEvent).order_by(col(AuditEvent.id))
    if since:
        statement = statement.where(AuditEvent.at >= since)
    if device_id:
        statement = statement.where(AuditEvent.device_id == device_id)
    if action:
        statement = statement.where(AuditEvent.action == action)
    if limit:
        statement = statement.limit(limit)
    return session.exec(statement).all()


def record_revocation(
    *, session: Session, now: datetime, kind: str, serial: str | None = None,
    device_id: str | None = None,
) -> RevocationEvent:
    event = RevocationEvent(serial=serial, device_id=device_id, kind=kind, created_at=now)
    session.add(event)
    session.flush()
    return event


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
