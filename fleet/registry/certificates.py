"""Certificate rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, bindparam, exists, func, insert, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select, update

from fleet.registry.engine import execute
from fleet.registry.models import Certificate, CertificateStatus, Device

_TABLE = Certificate.__table__  # type: ignore[attr-defined]
_SELECT = sa_select(_TABLE).where(_TABLE.c.serial == bindparam("serial"))
_SELECT_FOR_UPDATE = _SELECT.with_for_update()
_INSERT = insert(_TABLE)


def get_certificate(*, session: Session, serial: str,
                    for_update: bool = False) -> Certificate | None:
    """The certificate row (detached), locked until commit with *for_update* on PostgreSQL."""
    statement = _SELECT_FOR_UPDATE if for_update else _SELECT
    row = execute(session, statement, serial=serial).mappings().first()
    return Certificate(**row) if row else None


_DEVICES = Device.__table__  # type: ignore[attr-defined]
_ADMISSION = (
    sa_select(_TABLE.c.fingerprint_sha256, _TABLE.c.status, _TABLE.c.not_after,
              _TABLE.c.superseded_at, _TABLE.c.device_id, _TABLE.c.service,
              _DEVICES.c.status.label("device_status"), _DEVICES.c.group.label("device_group"))
    .select_from(_TABLE.outerjoin(_DEVICES, _DEVICES.c.id == _TABLE.c.device_id))
    .where(_TABLE.c.serial == bindparam("serial"))
)


def admission_facts(*, session: Session, serial: str) -> Row[Any] | None:
    """What broker admission decides on, in one query: the certificate row and its device's
    status and group (fingerprint_sha256, status, not_after, superseded_at, device_id,
    service, device_status, device_group)."""
    return execute(session, _ADMISSION, serial=serial).first()


_RENEWAL_FACTS = (
    sa_select(_TABLE.c.fingerprint_sha256, _TABLE.c.status,
              exists().where(_TABLE.c.spki_sha256 == bindparam("spki_sha256"),
                             _TABLE.c.revocation_reason == "keyCompromise")
              .label("key_compromised"))
    .where(_TABLE.c.serial == bindparam("serial"))
)


def renewal_facts(*, session: Session, serial: str, spki_sha256: str) -> Row[Any] | None:
    """What a renewal decides on, in one query (none of it locked): the fingerprint_sha256
    and status of the certificate *serial*, and whether a certificate of the public key
    *spki_sha256* (the new one's) was revoked for keyCompromise (key_compromised); None for
    an unknown serial."""
    return execute(session, _RENEWAL_FACTS, serial=serial, spki_sha256=spki_sha256).first()


def add_certificate(*, session: Session, certificate: Certificate) -> Certificate:
    execute(session, _INSERT, **certificate.model_dump())
    return certificate


def list_certificates(
    *,
    session: Session,
    device_id: str | None = None,
    service: str | None = None,
    status: str | None = None,
    expiring_before: datetime | None = None,
) -> Sequence[Certificate]:
    statement = select(Certificate).order_by(col(Certificate.issued_at), col(Certificate.serial))
    if device_id:
        statement = statement.where(Certificate.device_id == device_id)
    if service:
        statement = statement.where(Certificate.service == service)
    if status:
        statement = statement.where(Certificate.status == status)
    if expiring_before:
        statement = statement.where(Certificate.not_after <= expiring_before)
    return session.exec(statement).all()


_ACTIVE_OF_DEVICE = sa_select(_TABLE.c.serial).where(
    _TABLE.c.device_id == bindparam("device_id"),
    _TABLE.c.status == CertificateStatus.ACTIVE.value,
)
_SUPERSEDE_SERIALS = (
    update(_TABLE)
    .where(_TABLE.c.serial.in_(bindparam("serials", expanding=True)),
           _TABLE.c.status == CertificateStatus.ACTIVE.value)
    .values(status=CertificateStatus.SUPERSEDED.value, superseded_at=bindparam("now"))
)
_SUPERSEDE_ONE = (
    update(_TABLE)
    .where(_TABLE.c.serial == bindparam("one_serial"),
           _TABLE.c.status == CertificateStatus.ACTIVE.value)
    .values(status=CertificateStatus.SUPERSEDED.value, superseded_at=bindparam("now"))
)


def supersede_active(*, session: Session, device_id: str, now: datetime) -> list[str]:
    """Mark every active certificate of a device superseded at *now*; return their serials."""
    serials = list(execute(session, _ACTIVE_OF_DEVICE, device_id=device_id).scalars())
    if serials:
        execute(session, _SUPERSEDE_SERIALS, serials=serials, now=now)
    return serials


def supersede_if_active(*, session: Session, serial: str, now: datetime) -> bool:
    """Supersede one certificate at *now* if it is still active; False when another renewal
    won."""
    return bool(execute(session, _SUPERSEDE_ONE, one_serial=serial, now=now).rowcount == 1)


def revoke_certificates(
    *, session: Session, serials: Sequence[str], reason: str, now: datetime
) -> None:
    """Revoke those of *serials* not revoked yet: a revocation's time and reason, once
    recorded, are never rewritten (by a concurrent revocation either)."""
    if serials:
        session.exec(
            update(Certificate)
            .where(col(Certificate.serial).in_(list(serials)),
                   col(Certificate.status) != CertificateStatus.REVOKED)
            .values(status=CertificateStatus.REVOKED, revoked_at=now, revocation_reason=reason)
        )


def unrevoked_serials(*, session: Session, device_id: str) -> list[str]:
    statement = select(Certificate.serial).where(
        Certificate.device_id == device_id, Certificate.status != CertificateStatus.REVOKED
    )
    return list(session.exec(statement).all())


def unrevoked_with_key(*, session: Session, spki_sha256: str) -> Sequence[Certificate]:
    """Every certificate of this public key that is not revoked yet, locked until commit on
    PostgreSQL."""
    statement = select(Certificate).where(
        Certificate.spki_sha256 == spki_sha256, Certificate.status != CertificateStatus.REVOKED
    ).order_by(col(Certificate.issued_at), col(Certificate.serial)).with_for_update()
    return session.exec(statement).all()


_KEY_COMPROMISED = sa_select(_TABLE.c.serial).where(
    _TABLE.c.spki_sha256 == bindparam("spki_sha256"),
    _TABLE.c.revocation_reason == "keyCompromise").limit(1)


def key_compromised(*, session: Session, spki_sha256: str) -> bool:
    """Has a certificate of this public key been revoked for keyCompromise?"""
    return execute(session, _KEY_COMPROMISED, spki_sha256=spki_sha256).first() is not None


def revoked_certificates(*, session: Session, now: datetime,
                         authority_key_id: str | None = None) -> Sequence[Certificate]:
    """Revoked certificates that have not expired yet (of one issuing CA when
    *authority_key_id* is given)."""
    statement = select(Certificate).where(
        Certificate.status == CertificateStatus.REVOKED, Certificate.not_after > now
    ).order_by(col(Certificate.revoked_at))
    if authority_key_id is not None:
        statement = statement.where(Certificate.authority_key_id == authority_key_id)
    return session.exec(statement).all()


def superseded_since(*, session: Session, now: datetime, before: datetime | None = None,
                     authority_key_id: str | None = None) -> Sequence[Certificate]:
    """Superseded certificates that have not expired yet, superseded before *before* when
    given (past their grace), oldest supersession first (of one issuing CA when
    *authority_key_id* is given)."""
    statement = select(Certificate).where(
        Certificate.status == CertificateStatus.SUPERSEDED, Certificate.not_after > now)
    if before is not None:
        statement = statement.where(col(Certificate.superseded_at) <= before)
    if authority_key_id is not None:
        statement = statement.where(Certificate.authority_key_id == authority_key_id)
    return session.exec(statement.order_by(col(Certificate.superseded_at))).all()


def _usable(authority_key_id: str, now: datetime, superseded_after: datetime) -> Any:
    """Certificates of one issuing CA still usable at *now*: unexpired and active, or
    superseded after *superseded_after* (still in their grace)."""
    return and_(
        _TABLE.c.authority_key_id == authority_key_id, _TABLE.c.not_after > now,
        or_(_TABLE.c.status == CertificateStatus.ACTIVE.value,
            and_(_TABLE.c.status == CertificateStatus.SUPERSEDED.value,
                 _TABLE.c.superseded_at > superseded_after)))


def usable_summary(*, session: Session, authority_key_id: str, now: datetime,
                   superseded_after: datetime) -> tuple[int, datetime | None]:
    """How many certificates of one issuing CA are still usable, and when the last of them
    expires (see _usable)."""
    statement = sa_select(func.count().label("count"),
                          func.max(_TABLE.c.not_after).label("last")).where(
        _usable(authority_key_id, now, superseded_after))
    row = execute(session, statement).mappings().one()
    return int(row["count"]), row["last"]


def usable_issued_by(*, session: Session, authority_key_id: str, now: datetime,
                     superseded_after: datetime) -> list[tuple[str, str | None]]:
    """(serial, device_id) of every certificate of one issuing CA still usable (see
    _usable)."""
    statement = sa_select(_TABLE.c.serial, _TABLE.c.device_id).where(
        _usable(authority_key_id, now, superseded_after)).order_by(_TABLE.c.serial)
    return [(row["serial"], row["device_id"])
            for row in execute(session, statement).mappings()]


def next_supersession_cutoff(*, session: Session, now: datetime,
                             grace: timedelta) -> datetime | None:
    """When the next superseded certificate still in its grace reaches the end of it."""
    statement = select(func.min(Certificate.superseded_at)).where(
        Certificate.status == CertificateStatus.SUPERSEDED, Certificate.not_after > now,
        col(Certificate.superseded_at) > now - grace)
    earliest = session.exec(statement).first()
    return earliest + grace if earliest is not None else None
