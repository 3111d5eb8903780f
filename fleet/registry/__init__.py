"""The device registry: SQLModel tables, keyword-only queries, engine set-up, migrations."""

from fleet.registry.engine import make_engine, migrate, session, unavailable_as_error
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
    "DeviceStatus", "RevocationEvent", "make_engine", "migrate", "session",
    "unavailable_as_error", "utcnow",
]
