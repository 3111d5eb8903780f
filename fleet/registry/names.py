"""Device ids and service names stay disjoint MQTT client-id namespaces.

A service's client ids are its name and its name followed by one of ``-_.:/@`` and anything
(``fleet.pki.identity``), so a new device may not be named after a service or a service's
name plus a separator and more, and a new service may not be named so that a device's id is one
of its client ids. A revoked device or service keeps its name; only ``fleet device delete``
(of a device that never enrolled or is revoked) releases a device's.

Creating a device or a service calls ``require_disjoint`` in the transaction that inserts it.
SQLite write transactions are already serial (BEGIN IMMEDIATE). PostgreSQL takes a
transaction-scoped advisory lock: shared for a device (new devices never collide with each
other, so enrollments do not queue behind one another), exclusive for a service.
"""

from __future__ import annotations

from sqlalchemy import bindparam, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session

from fleet.errors import ConflictError
from fleet.pki.identity import (
    SERVICE_CLIENT_ID_SEPARATORS,
    Identity,
    is_service_client_id,
    services_claiming,
)
from fleet.registry.engine import execute
from fleet.registry.models import Certificate, Device

_NAMES_LOCK_KEY = 0x466C6565744E616D  # pg_advisory_xact_lock key of the client-id namespaces
_CERTIFICATES = Certificate.__table__  # type: ignore[attr-defined]
_DEVICES = Device.__table__  # type: ignore[attr-defined]
_SERVICE_NAMED = (sa_select(_CERTIFICATES.c.service)
                  .where(_CERTIFICATES.c.service.in_(bindparam("names", expanding=True)))
                  .limit(1))


def require_disjoint(*, session: Session, identity: Identity) -> None:
    """Raise ConflictError if an identity of the other kind shares a client id with
    *identity*; the namespaces stay locked until the caller's transaction ends."""
    _lock(session, exclusive=identity.kind == "service")
    other = (_device_claimed_by(session, identity.name) if identity.kind == "service"
             else _service_claiming(session, identity.name))
    if other is None:
        return
    raise ConflictError(
        f"{identity} collides with {other}: MQTT client ids would overlap (a service's are its "
        f"name, or its name followed by one of {SERVICE_CLIENT_ID_SEPARATORS} and more); "
        "choose another name",
        **{"device_id" if identity.kind == "device" else "service": identity.name},
        collides_with=str(other))


def _lock(session: Session, *, exclusive: bool) -> None:
    if session.get_bind().dialect.name == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        session.connection().exec_driver_sql(f"SELECT {function}({_NAMES_LOCK_KEY})")


def _service_claiming(session: Session, device_id: str) -> Identity | None:
    name = execute(session, _SERVICE_NAMED, names=services_claiming(device_id)).scalar()
    return Identity("service", name) if name is not None else None


def _device_claimed_by(session: Session, service: str) -> Identity | None:
    # LIKE narrows the search; SQLite's LIKE ignores ASCII case, so the rule itself decides.
    statement = sa_select(_DEVICES.c.id).where(or_(
        _DEVICES.c.id == service,
        *(_DEVICES.c.id.startswith(service + separator, autoescape=True)
          for separator in SERVICE_CLIENT_ID_SEPARATORS)))
    device_id = next((d for d in execute(session, statement).scalars()
                      if is_service_client_id(service, d)), None)
    return Identity("device", device_id) if device_id is not None else None
