"""Device rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from fleet.registry.models import Device, DeviceStatus


def get_device(*, session: Session, device_id: str, for_update: bool = False) -> Device | None:
    statement = select(Device).where(Device.id == device_id)
    if for_update:
        statement = statement.with_for_update()
    return session.exec(statement).first()


def create_device(
    *, session: Session, device_id: str, group: str, status: DeviceStatus, now: datetime
) -> Device:
    device = Device(id=device_id, group=group, status=status, created_at=now, updated_at=now)
    session.add(device)
    session.flush()
    return device


def set_device_status(
    *, session: Session, device: Device, status: DeviceStatus, reason: str | None, now: datetime
) -> Device:
    device.status = status
    device.status_reason = reason
    device.updated_at = now
    session.add(device)
    session.flush()
    return device


def list_devices(
    *, session: Session, status: str | None = None, group: str | None = None
) -> Sequence[Device]:
    statement = select(Device).order_by(col(Device.id))
    if status:
        statement = statement.where(Device.status == status)
    if group:
        statement = statement.where(Device.group == group)
    return session.exec(statement).all()
