"""Which of many devices and certificates are withdrawn (may no longer hold anything on a
broker): devices not active, certificates revoked, and those no longer in the registry.
Asked in batches of ``IN_BATCH`` keys."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlmodel import Session

from fleet.registry.models import Certificate, CertificateStatus, Device, DeviceStatus

IN_BATCH = 500
"""Keys per ``IN (...)`` list: well within every database's limit on bound parameters."""
GONE = "deleted"
"""The status given to a device or certificate not in the registry."""

_DEVICES = Device.__table__  # type: ignore[attr-defined]
_CERTIFICATES = Certificate.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """The withdrawn ones among those asked about, each with its status."""

    devices: Mapping[str, str]
    serials: Mapping[str, str]


def withdrawn(*, session: Session, device_ids: Collection[str],
              serials: Collection[str]) -> Withdrawn:
    devices = _lookup(session, _DEVICES.c.id, _DEVICES.c.status, device_ids)
    certificates = _lookup(session, _CERTIFICATES.c.serial, _CERTIFICATES.c.status, serials)
    return Withdrawn(
        devices={device_id: status for device_id in device_ids
                 if (status := devices.get(device_id, GONE)) != DeviceStatus.ACTIVE},
        serials={serial: status for serial in serials
                 if (status := certificates.get(serial, GONE))
                 in (GONE, CertificateStatus.REVOKED)})


def _lookup(session: Session, key: ColumnElement[Any], value: ColumnElement[Any],
            keys: Collection[str]) -> dict[str, Any]:
    """{key: value} of the rows whose *key* is one of *keys*."""
    found: dict[str, Any] = {}
    wanted = sorted(keys)
    for start in range(0, len(wanted), IN_BATCH):
        statement = select(key, value).where(key.in_(wanted[start:start + IN_BATCH]))
        found.update((row[0], row[1]) for row in session.connection().execute(statement))
    return found
