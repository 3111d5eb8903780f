"""Device rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from fleet.registry.engine import execute
from fleet.registry.models import Device, DeviceStatus

_TABLE = Device.__table__  # type: ignore[attr-defined]
_SELECT = sa_select(_TABLE).where(_TABLE.c.id == bindparam("device_id"))
_SELECT_FOR_UPDATE = _SELECT.with_for_update()
_INSERT = insert(_TABLE)
_DELETE = delete(_TABLE).where(_TABLE.c.id == bindparam("device_id"))
_SET_STATUS = (
    update(_TABLE).where(_TABLE.c.id == bindparam("device_id"))
    .values(status=bindparam("new_status"), status_reason=bindparam("new_reason"),
            updated_at=bindparam("now"))
)


def get_device(*, session: Session, device_id: str, for_update: bool = False) -> Device | None:
    """The device row (detached), locked until commit with *for_update* on PostgreSQL."""
    statement = _SELECT_FOR_UPDATE if for_update else _SELECT
    row = execute(session, statement, device_id=device_id).mappings().first()
    return Device(**row) if row else None


def create_device(
    *, session: Session, device_id: str, group: str, status: DeviceStatus, now: datetime
) -> Device:
    device = Device(id=device_id, group=group, status=status, created_at=now, updated_at=now)
    execute(session, _INSERT, **device.model_dump())
    return device


_INSERT_IF_ABSENT = {
    "sqlite": sqlite_insert(_TABLE).on_conflict_do_nothing().returning(_TABLE.c.id),
    "postgresql": postgresql_insert(_TABLE).on_conflict_do_nothing().returning(_TABLE.c.id),
}


def create_device_if_absent(
    *, session: Session, device_id: str, group: str, status: DeviceStatus, now: datetime
) -> Device | None:
    """Create the device unless a row of that id exists, committed meanwhile by a concurrent
    transaction (on PostgreSQL the insert waits for it): None then, and nothing written."""
    device = Device(id=device_id, group=group, status=status, created_at=now, updated_at=now)
    statement = _INSERT_IF_ABSENT[session.get_bind().dialect.name]
    inserted = execute(session, statement, **device.model_dump()).first()
    return device if inserted is not None else None


def set_device_status(
    *, session: Session, device: Device, status: DeviceStatus, reason: str | None, now: datetime
) -> Device:
    execute(session, _SET_STATUS, device_id=device.id, new_status=status, new_reason=reason,
            now=now)
    device.status = status
    device.status_reason = reason
    device.updated_at = now
    return device


def delete_device(*, session: Session, device_id: str) -> None:
    """Remove the device row (its certificates, tokens and events stay)."""
    execute(session, _DELETE, device_id=device_id)


def list_devices(
    *, session: Session, status: str | None = None, group: str | None = None
) -> Sequence[Device]:
    statement = select(Device).order_by(col(Device.id))
    if status:
        statement = statement.where(Device.status == status)
    if group:
        statement = statement.where(Device.group == group)
    return session.exec(statement).all()
