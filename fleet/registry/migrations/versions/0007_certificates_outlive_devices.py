"""A certificate outlives its device row: no foreign key from certificates to devices.

``fleet device delete`` removes a device that never enrolled or is revoked; its certificates
stay, so that the CRL keeps listing the revoked ones until they expire and a key revoked for
keyCompromise stays refused.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# SQLite reflects the constraint without a name; the batch copy names it by this convention.
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _foreign_key_name() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "certificates_device_id_fkey"  # PostgreSQL's default name, from revision 0001
    return "fk_certificates_device_id_devices"


def upgrade() -> None:
    with op.batch_alter_table("certificates", naming_convention=NAMING) as batch:
        batch.drop_constraint(_foreign_key_name(), type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("certificates", naming_convention=NAMING) as batch:
        batch.create_foreign_key(_foreign_key_name(), "devices", ["device_id"], ["id"])
