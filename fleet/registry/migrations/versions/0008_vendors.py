"""Trusted manufacturer CAs (vendors, vendor_allowed_ids) and the manufacturer certificates
devices enrolled with (manufacturer_certificates).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleet.registry.models import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vendors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("ca_pem", sa.Text(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("group", sa.String(64), nullable=False, index=True),
        sa.Column("device_id_from", sa.String(16), nullable=False),
        sa.Column("allow_listed", sa.Boolean(), nullable=False),
        sa.Column("crl_url", sa.String(512)),
        sa.Column("crl_file", sa.String(1024)),
        sa.Column("channel_binding", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "vendor_allowed_ids",
        sa.Column("vendor", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(64), primary_key=True),
    )
    op.create_table(
        "manufacturer_certificates",
        sa.Column("fingerprint_sha256", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.String(1024), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("vendor", sa.String(64), nullable=False, index=True),
        sa.Column("device_id", sa.String(64), nullable=False, index=True),
        sa.Column("enrolled_at", UTCDateTime(), nullable=False),
        sa.Column("armed", sa.Boolean(), nullable=False),
        sa.Column("rearm_count", sa.Integer(), nullable=False),
        sa.Column("rearmed_at", UTCDateTime()),
    )


def downgrade() -> None:
    op.drop_table("manufacturer_certificates")
    op.drop_table("vendor_allowed_ids")
    op.drop_table("vendors")
