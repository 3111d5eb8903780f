"""Certificate rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select, update

from fleet.registry.models import Certificate, CertificateStatus


def get_certificate(*, session: Session, serial: str) -> Certificate | None:
    return session.get(Certificate, serial)


def add_certificate(*, session: Session, certificate: Certificate) -> Certificate:
    session.add(certificate)
    session.flush()
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


def supersede_active(
    *, session: Session, device_id: str, except_serial: str | None = None
) -> list[str]:
    """Mark every active certificate of a device superseded; return their serials."""
    statement = select(Certificate.serial).where(
        Certificate.device_id == device_id, Certificate.status == CertificateStatus.ACTIVE
    )
    serials = [s for s in session.exec(statement).all() if s != except_serial]
    if serials:
        session.exec(
            update(Certificate)
            .where(col(Certificate.serial).in_(serials))
            .values(status=CertificateStatus.SUPERSEDED)
        )
    return serials


def revoke_certificates(
    *, session: Session, serials: Sequence[str], reason: str, now: datetime
) -> None:
    if serials:
        session.exec(
            update(Certificate)
            .where(col(Certificate.serial).in_(list(serials)))
            .values(status=CertificateStatus.REVOKED, revoked_at=now, revocation_reason=reason)
        )


def unrevoked_serials(*, session: Session, device_id: str) -> list[str]:
    statement = select(Certificate.serial).where(
        Certificate.device_id == device_id, Certificate.status != CertificateStatus.REVOKED
    )
    return list(session.exec(statement).all())


def revoked_certificates(*, session: Session, now: datetime) -> Sequence[Certificate]:
    """Revoked certificates that have not expired yet: what a CRL must list."""
    statement = select(Certificate).where(
        Certificate.status == CertificateStatus.REVOKED, Certificate.not_after > now
    ).order_by(col(Certificate.revoked_at))
    return session.exec(statement).all()
