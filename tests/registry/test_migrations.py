"""Migrations of data: a registry made by an older Fleet keeps working after the upgrade."""

from __future__ import annotations

from datetime import timedelta

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Engine

from fleet.registry import BootstrapToken, Device, DeviceStatus, migrate, utcnow
from fleet.registry import groups as groups_db
from fleet.registry.engine import MIGRATIONS, write_session


def upgrade_to(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_groups_named_by_devices_and_tokens_are_declared(database_url: str,
                                                         engine: Engine) -> None:
    """The fixture's engine is at the newest revision; start again from 0005."""
    with engine.begin() as connection:
        for table in ("manufacturer_certificates", "vendor_allowed_ids", "vendors",
                      "device_groups", "alembic_version", "audit_checkpoints", "crl_state",
                      "audit_events", "revocation_events", "bootstrap_tokens",
                      "certificates", "devices"):
            connection.execute(text(f"DROP TABLE {table}"))
    upgrade_to(engine, "0005")
    now = utcnow()
    with write_session(engine) as session:
        session.add(Device(id="dev-1", group="pumps", status=DeviceStatus.ACTIVE,
                           created_at=now, updated_at=now))
        session.add(Device(id="dev-2", group="sensors", status=DeviceStatus.REVOKED,
                           created_at=now, updated_at=now))
        session.add(BootstrapToken(id="0123456789abcdef", secret_hash="0" * 64, group="sensors",
                                   uses_left=1, max_uses=1, expires_at=now + timedelta(hours=1),
                                   created_at=now, created_by="test"))
        session.add(BootstrapToken(id="fedcba9876543210", secret_hash="0" * 64, group="line-3",
                                   uses_left=0, max_uses=1, expires_at=now - timedelta(hours=1),
                                   created_at=now, created_by="test"))
        session.commit()
    migrate(engine)
    with write_session(engine) as session:
        groups = groups_db.list_groups(session=session)
    assert [g.name for g in groups] == ["line-3", "pumps", "sensors"]
    assert {g.created_by for g in groups} == {"fleet:migration-0006"}
    migrate(engine)  # and again: nothing changes


def test_a_0007_registry_gains_the_vendor_tables(database_url: str, engine: Engine) -> None:
    """Revision 0008 adds vendors, their allow lists and manufacturer certificates to a
    registry in use, whose devices stay as they were."""
    with engine.begin() as connection:
        for table in ("manufacturer_certificates", "vendor_allowed_ids", "vendors"):
            connection.execute(text(f"DROP TABLE {table}"))
        connection.execute(text("UPDATE alembic_version SET version_num = '0007'"))
    now = utcnow()
    with write_session(engine) as session:
        session.add(Device(id="dev-1", group="pumps", status=DeviceStatus.ACTIVE,
                           created_at=now, updated_at=now))
        session.commit()
    migrate(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("0008",)]
        for table in ("manufacturer_certificates", "vendor_allowed_ids", "vendors"):
            assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
        assert connection.execute(text("SELECT id FROM devices")).all() == [("dev-1",)]
