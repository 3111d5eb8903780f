"""Migration 0005: certificates issued before it learn which issuing CA signed them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from fleet import pki
from fleet.ca import CA
from fleet.registry import make_engine, migrate, utcnow
from fleet.registry.engine import MIGRATIONS
from fleet.registry.models import UTCDateTime


def test_rows_from_before_the_revision_get_the_key_id_their_pem_carries(tmp_path: Path,
                                                                        ca: CA) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}", create=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
    key = pki.generate_private_key()
    now = utcnow()
    cert = pki.issue_certificate(
        profile=pki.identity_profile(pki.Identity("service", "backend"),
                                     trust_domain="fleet.local", lifetime=timedelta(days=30)),
        public_key=key.public_key(), issuer_key=ca.issuing_key, issuer=ca.issuing, now=now)
    certificates = sa.table(
        "certificates", sa.column("serial", sa.String), sa.column("service", sa.String),
        sa.column("fingerprint_sha256", sa.String), sa.column("status", sa.String),
        sa.column("not_before", UTCDateTime()), sa.column("not_after", UTCDateTime()),
        sa.column("issued_at", UTCDateTime()), sa.column("pem", sa.Text))
    with engine.begin() as connection:
        connection.execute(certificates.insert().values(
            serial=format(cert.serial_number, "x"), service="backend",
            fingerprint_sha256=pki.fingerprint_sha256(cert), status="active",
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            issued_at=now, pem=pki.certificate_pem(cert)))
    try:
        migrate(engine)
        with engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT authority_key_id FROM certificates")) \
                .scalar_one()
    finally:
        engine.dispose()
    assert stored == pki.key_identifier(ca.issuing.public_key())
