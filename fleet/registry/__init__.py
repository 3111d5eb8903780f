"""The device registry: SQLModel tables, keyword-only queries, engine set-up, migrations."""

from fleet.registry.engine import has_schema, make_engine, migrate, session, unavailable_as_error
from fleet.registry.models import (
    AuditEvent,
    BootstrapToken,
    Certificate,
    CertificateStatus,
    Device,
    DeviceStatus,
    RevocationEvent,
    utcnow,
)

__all__ = [
    "AuditEvent", "BootstrapToken", "Certificate", "CertificateStatus", "Device",
    "DeviceStatus", "RevocationEvent", "has_schema", "make_engine", "migrate", "session",
    "unavailable_as_error", "utcnow",
]
