"""Initial schema: devices, certificates, bootstrap tokens, revocation events, audit, CRL state.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleet.registry.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("group", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("status_reason", sa.String(64)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), index=True),
        sa.Column("service", sa.String(64), index=True),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("revoked_at", UTCDateTime()),
        sa.Column("revocation_reason", sa.String(32)),
        sa.Column("replaces", sa.String(40)),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
    )
    op.create_table(
        "bootstrap_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("group", sa.String(64), nullable=False, index=True),
        sa.Column("device_id", sa.String(64), index=True),
        sa.Column("uses_left", sa.Integer(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("revoked_at", UTCDateTime()),
        sa.CheckConstraint("uses_left >= 0", name="uses_left_not_negative"),
    )
    op.create_table(
        "revocation_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("serial", sa.String(40)),
        sa.Column("device_id", sa.String(64)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False, index=True),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(64), index=True),
        sa.Column("serial", sa.String(40)),
        sa.Column("reason", sa.String(512)),
        sa.Column("detail", sa.Text()),
    )
    op.create_table(
        "crl_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("crl_number", sa.Integer(), nullable=False),
    )
    op.execute("INSERT INTO crl_state (id, crl_number) VALUES (1, 0)")


def downgrade() -> None:
    for table in ("crl_state", "audit_events", "revocation_events", "bootstrap_tokens",
                  "certificates", "devices"):
        op.drop_table(table)
