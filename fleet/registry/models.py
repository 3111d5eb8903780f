"""Registry tables (SQLModel). Only hashes of token secrets are ever stored."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _time(*, index: bool = False, nullable: bool = False) -> Any:
    return Field(sa_column=Column(UTCDateTime(), index=index, nullable=nullable))


class DeviceStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class CertificateStatus(enum.StrEnum):
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"


class Group(SQLModel, table=True):
    """A declared device group (like an AWS IoT thing group): tokens, devices and EST labels
    may name only these."""

    __tablename__ = "device_groups"

    name: str = Field(primary_key=True, max_length=64)
    description: str | None = Field(default=None, max_length=256)
    created_at: datetime = _time()
    created_by: str = Field(max_length=128)


class Device(SQLModel, table=True):
    __tablename__ = "devices"

    id: str = Field(primary_key=True, max_length=64)
    group: str = Field(index=True, max_length=64)
    status: str = Field(default=DeviceStatus.PENDING, index=True, max_length=16)
    status_reason: str | None = Field(default=None, max_length=64)
    created_at: datetime = _time()
    updated_at: datetime = _time()


class Certificate(SQLModel, table=True):
    __tablename__ = "certificates"

    serial: str = Field(primary_key=True, max_length=40)
    # No foreign key: a certificate outlives its device row (fleet device delete).
    device_id: str | None = Field(default=None, index=True, max_length=64)
    service: str | None = Field(default=None, index=True, max_length=64)
    fingerprint_sha256: str = Field(unique=True, max_length=64)
    spki_sha256: str | None = Field(default=None, index=True, max_length=64)
    authority_key_id: str | None = Field(default=None, index=True, max_length=64)
    """The key identifier of the issuing CA that signed it (see fleet.ca.Issuing.key_id)."""
    not_before: datetime = _time()
    not_after: datetime = _time(index=True)
    status: str = Field(default=CertificateStatus.ACTIVE, index=True, max_length=16)
    revoked_at: datetime | None = _time(nullable=True)
    revocation_reason: str | None = Field(default=None, max_length=32)
    superseded_at: datetime | None = _time(nullable=True)
    replaces: str | None = Field(default=None, max_length=40)
    issued_at: datetime = _time()
    pem: str = Field(sa_column=Column(Text, nullable=False))


class BootstrapToken(SQLModel, table=True):
    __tablename__ = "bootstrap_tokens"

    id: str = Field(primary_key=True, max_length=32)
    secret_hash: str = Field(max_length=128)
    group: str = Field(index=True, max_length=64)
    device_id: str | None = Field(default=None, index=True, max_length=64)
    uses_left: int = Field(sa_column=Column(Integer, nullable=False))
    max_uses: int
    expires_at: datetime = _time()
    created_at: datetime = _time()
    created_by: str = Field(max_length=128)
    revoked_at: datetime | None = _time(nullable=True)


class Vendor(SQLModel, table=True):
    """A trusted manufacturer CA (``fleet vendor add``): the devices it certified (IEEE
    802.1AR IDevIDs) enroll into its group with that certificate alone, and for nothing else."""

    __tablename__ = "vendors"

    name: str = Field(primary_key=True, max_length=64)
    ca_pem: str = Field(sa_column=Column(Text, nullable=False))
    """The vendor's CA certificates (PEM): its root and any intermediates."""
    fingerprint_sha256: str = Field(unique=True, max_length=64)
    """SHA-256 of the first CA certificate of ``ca_pem``."""
    group: str = Field(index=True, max_length=64)
    device_id_from: str = Field(max_length=16)  # cn | serialNumber | san-uri
    allow_listed: bool = Field(sa_column=Column(Boolean, nullable=False))
    """Only the ids in vendor_allowed_ids may enroll."""
    crl_url: str | None = Field(default=None, max_length=512)
    crl_file: str | None = Field(default=None, max_length=1024)
    channel_binding: bool = Field(sa_column=Column(Boolean, nullable=False))
    """A CSR must carry the TLS session's tls-unique as its challengePassword."""
    created_at: datetime = _time()
    created_by: str = Field(max_length=128)


class VendorAllowedId(SQLModel, table=True):
    """A device id a vendor's allow list names (a factory's serial list)."""

    __tablename__ = "vendor_allowed_ids"

    vendor: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(primary_key=True, max_length=64)


class ManufacturerCertificate(SQLModel, table=True):
    """A manufacturer certificate a device enrolled with: one enrollment each, unless an
    operator re-arms it (``fleet device rearm``)."""

    __tablename__ = "manufacturer_certificates"

    fingerprint_sha256: str = Field(primary_key=True, max_length=64)
    issuer: str = Field(sa_column=Column(String(1024), nullable=False))
    serial: str = Field(max_length=64)
    vendor: str = Field(index=True, max_length=64)
    # No foreign key: the record outlives its device row, so a deleted device stays enrolled.
    device_id: str = Field(index=True, max_length=64)
    enrolled_at: datetime = _time()
    armed: bool = Field(sa_column=Column(Boolean, nullable=False))
    """It may enroll (again): set by ``fleet device rearm``, cleared by the enrollment."""
    rearm_count: int = Field(default=0)
    rearmed_at: datetime | None = _time(nullable=True)


class RevocationEvent(SQLModel, table=True):
    """What the broker polls: each row drops live sessions of a certificate or a device."""

    __tablename__ = "revocation_events"

    id: int | None = Field(default=None, primary_key=True)
    serial: str | None = Field(default=None, max_length=40)
    device_id: str | None = Field(default=None, max_length=64)
    kind: str = Field(max_length=16)  # revoked | suspended
    created_at: datetime = _time()


class AuditEvent(SQLModel, table=True):
    """Append-only record of every security decision."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _time(index=True)
    action: str = Field(index=True, max_length=64)
    outcome: str = Field(max_length=16)  # ok | refused
    actor: str = Field(max_length=128)
    device_id: str | None = Field(default=None, index=True, max_length=64)
    serial: str | None = Field(default=None, max_length=40)
    reason: str | None = Field(default=None, sa_column=Column(String(512)))
    detail: str | None = Field(default=None, sa_column=Column(Text))
    digest: str | None = Field(default=None, max_length=64)  # hash chain, see events.py


class AuditCheckpoint(SQLModel, table=True):
    """A keyed checkpoint of the audit chain's head; the same record is in the data dir's
    checkpoint file (see fleet.checkpoints)."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (UniqueConstraint("writer", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    writer: str = Field(max_length=128)  # the process that wrote it
    seq: int  # 1, 2, 3, ... per writer
    event_id: int = Field(index=True)  # the newest audit event it covers
    head: str = Field(max_length=64)  # that event's digest
    at: datetime = _time()
    file: str = Field(max_length=32)  # the id of the checkpoint file it was appended to
    mac: str = Field(max_length=64)  # HMAC-SHA256 over all of the above


class CRLState(SQLModel, table=True):
    """A single row holding the last CRL number issued."""

    __tablename__ = "crl_state"

    id: int = Field(default=1, primary_key=True)
    crl_number: int = Field(default=0)
