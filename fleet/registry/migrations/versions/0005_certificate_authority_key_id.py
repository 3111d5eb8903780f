"""Certificates record the issuing CA that signed them (its authority key identifier).

After a rotation of the issuing CA, two issuing CAs are in use: each signs the CRL of its own
certificates, and one is retired once none of its certificates is usable any more. Rows from
before this revision get the identifier their PEM carries.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from cryptography import x509

from fleet.pki import authority_key_id

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("authority_key_id", sa.String(64)))
        batch.create_index("ix_certificates_authority_key_id", ["authority_key_id"])
    certificates = sa.table("certificates", sa.column("serial", sa.String),
                            sa.column("pem", sa.Text),
                            sa.column("authority_key_id", sa.String))
    connection = op.get_bind()
    rows = connection.execute(sa.select(certificates.c.serial, certificates.c.pem)).all()
    for serial, pem in rows:
        key_id = authority_key_id(x509.load_pem_x509_certificate(pem.encode()))
        connection.execute(certificates.update().where(certificates.c.serial == serial)
                           .values(authority_key_id=key_id))


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_index("ix_certificates_authority_key_id")
        batch.drop_column("authority_key_id")
