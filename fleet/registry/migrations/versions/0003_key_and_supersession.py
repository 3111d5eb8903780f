"""Certificates record their key (SPKI SHA-256) and when they were superseded.

A keyCompromise revocation reaches every certificate of the same key; a superseded
certificate stays usable for ``certificates.superseded_grace`` after ``superseded_at``.
Rows that were superseded before this revision count as superseded now.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from cryptography import x509

from fleet.pki import spki_sha256
from fleet.registry.models import UTCDateTime, utcnow

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("spki_sha256", sa.String(64)))
        batch.add_column(sa.Column("superseded_at", UTCDateTime()))
        batch.create_index("ix_certificates_spki_sha256", ["spki_sha256"])
    certificates = sa.table("certificates", sa.column("serial", sa.String),
                            sa.column("pem", sa.Text), sa.column("status", sa.String),
                            sa.column("spki_sha256", sa.String),
                            sa.column("superseded_at", UTCDateTime()))
    connection = op.get_bind()
    rows = connection.execute(sa.select(certificates.c.serial, certificates.c.pem)).all()
    for serial, pem in rows:
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        connection.execute(certificates.update().where(certificates.c.serial == serial)
                           .values(spki_sha256=spki_sha256(key)))
    connection.execute(certificates.update().where(certificates.c.status == "superseded")
                       .values(superseded_at=utcnow()))


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_index("ix_certificates_spki_sha256")
        batch.drop_column("superseded_at")
        batch.drop_column("spki_sha256")
