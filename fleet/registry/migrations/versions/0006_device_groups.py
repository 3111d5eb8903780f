"""Device groups are declared (device_groups); an undeclared group is refused.

Every group that devices or bootstrap tokens already name is declared here, so an existing
registry keeps working: its tokens still enroll and its EST labels still point somewhere.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleet.registry.models import UTCDateTime, utcnow

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MIGRATION_ACTOR = "fleet:migration-0006"


def upgrade() -> None:
    groups = op.create_table(
        "device_groups",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("description", sa.String(256)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    named = sa.union(sa.select(sa.table("devices", sa.column("group")).c.group),
                     sa.select(sa.table("bootstrap_tokens", sa.column("group")).c.group))
    connection = op.get_bind()
    names = sorted(connection.execute(named).scalars())
    if names:
        now = utcnow()
        connection.execute(groups.insert(), [
            {"name": name, "description": None, "created_at": now,
             "created_by": MIGRATION_ACTOR} for name in names])


def downgrade() -> None:
    op.drop_table("device_groups")
