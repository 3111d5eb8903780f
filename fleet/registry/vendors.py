"""Trusted manufacturer CAs, their allow lists, and the manufacturer certificates devices
enrolled with.

A manufacturer certificate enrolls once: its row is inserted by that enrollment (the primary
key on its fingerprint makes a concurrent second insert fail) and read ``FOR UPDATE`` by any
later one, which enrolls only if an operator re-armed it meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import bindparam, delete, func, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session

from fleet.registry.engine import execute
from fleet.registry.models import ManufacturerCertificate, Vendor, VendorAllowedId

_VENDORS = Vendor.__table__  # type: ignore[attr-defined]
_ALLOWED = VendorAllowedId.__table__  # type: ignore[attr-defined]
_RECORDS = ManufacturerCertificate.__table__  # type: ignore[attr-defined]

_VENDOR = sa_select(_VENDORS).where(_VENDORS.c.name == bindparam("name"))
_ALL_VENDORS = sa_select(_VENDORS).order_by(_VENDORS.c.name)
_ALLOWED_ONE = (sa_select(_ALLOWED.c.device_id)
                .where(_ALLOWED.c.vendor == bindparam("vendor"),
                       _ALLOWED.c.device_id == bindparam("device_id")))
_ALLOWED_COUNT = (sa_select(func.count()).select_from(_ALLOWED)
                  .where(_ALLOWED.c.vendor == bindparam("vendor")))
_RECORD_FOR_UPDATE = (sa_select(_RECORDS)
                      .where(_RECORDS.c.fingerprint_sha256 == bindparam("fingerprint"))
                      .with_for_update())
_RECORDS_OF_DEVICE = (sa_select(_RECORDS).where(_RECORDS.c.device_id == bindparam("device_id"))
                      .order_by(_RECORDS.c.enrolled_at))
_ENROLLED_COUNT = (sa_select(func.count()).select_from(_RECORDS)
                   .where(_RECORDS.c.vendor == bindparam("vendor")))
_DISARM = (update(_RECORDS).where(_RECORDS.c.fingerprint_sha256 == bindparam("fingerprint"),
                                  _RECORDS.c.armed.is_(True))
           .values(armed=False, enrolled_at=bindparam("now")))
_REARM = (update(_RECORDS).where(_RECORDS.c.device_id == bindparam("of_device"),
                                 _RECORDS.c.armed.is_(False))
          .values(armed=True, rearm_count=_RECORDS.c.rearm_count + 1,
                  rearmed_at=bindparam("now")))


def get_vendor(*, session: Session, name: str) -> Vendor | None:
    row = execute(session, _VENDOR, name=name).mappings().first()
    return Vendor(**row) if row else None


def list_vendors(*, session: Session) -> Sequence[Vendor]:
    return [Vendor(**row) for row in execute(session, _ALL_VENDORS).mappings()]


def add_vendor(*, session: Session, vendor: Vendor, allowed: Iterable[str] = ()) -> Vendor:
    execute(session, insert(_VENDORS), **vendor.model_dump())
    rows = [{"vendor": vendor.name, "device_id": device_id} for device_id in allowed]
    if rows:
        session.connection().execute(insert(_ALLOWED), rows)
    return vendor


def delete_vendor(*, session: Session, name: str) -> None:
    """Remove the vendor and its allow list; the records of its certificates stay."""
    execute(session, delete(_ALLOWED).where(_ALLOWED.c.vendor == bindparam("name")), name=name)
    execute(session, delete(_VENDORS).where(_VENDORS.c.name == bindparam("name")), name=name)


def is_allowed(*, session: Session, vendor: str, device_id: str) -> bool:
    return execute(session, _ALLOWED_ONE, vendor=vendor,
                   device_id=device_id).first() is not None


def allowed_count(*, session: Session, vendor: str) -> int:
    return int(execute(session, _ALLOWED_COUNT, vendor=vendor).scalar_one())


def enrolled_count(*, session: Session, vendor: str) -> int:
    """Manufacturer certificates of *vendor* that enrolled a device."""
    return int(execute(session, _ENROLLED_COUNT, vendor=vendor).scalar_one())


def get_record(*, session: Session, fingerprint: str) -> ManufacturerCertificate | None:
    """The record of a manufacturer certificate, locked until commit (PostgreSQL)."""
    row = execute(session, _RECORD_FOR_UPDATE, fingerprint=fingerprint).mappings().first()
    return ManufacturerCertificate(**row) if row else None


def add_record(*, session: Session, record: ManufacturerCertificate) -> None:
    """Insert the record of a first enrollment (IntegrityError if one raced it)."""
    execute(session, insert(_RECORDS), **record.model_dump())


def disarm(*, session: Session, fingerprint: str, now: datetime) -> bool:
    """Use a re-armed record for an enrollment; False when it is not armed."""
    return execute(session, _DISARM, fingerprint=fingerprint, now=now).rowcount == 1


def records_of_device(*, session: Session, device_id: str) -> Sequence[ManufacturerCertificate]:
    return [ManufacturerCertificate(**row)
            for row in execute(session, _RECORDS_OF_DEVICE, device_id=device_id).mappings()]


def rearm(*, session: Session, device_id: str, now: datetime) -> int:
    """Arm every disarmed manufacturer certificate of *device_id*; how many were."""
    return execute(session, _REARM, of_device=device_id, now=now).rowcount
