"""The registry on SQLite and PostgreSQL: migrations, WAL, token uses, events, CRL number."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, StatementError
from sqlmodel import Session

from fleet.errors import RegistryUnavailableError
from fleet.registry import (
    BootstrapToken,
    Certificate,
    CertificateStatus,
    DeviceStatus,
    make_engine,
    migrate,
    unavailable_as_error,
)
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db
from fleet.registry import events as events_db
from fleet.registry import tokens as tokens_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import write_session

NOW = datetime.now(UTC).replace(microsecond=0)
TABLES = {"device_groups", "devices", "certificates", "bootstrap_tokens", "revocation_events",
          "audit_events", "audit_checkpoints", "crl_state", "vendors", "vendor_allowed_ids",
          "manufacturer_certificates", "alembic_version"}


def token_row(token_id: str = "0123456789abcdef", *, uses: int = 1,
              expires_at: datetime = NOW + timedelta(hours=1)) -> BootstrapToken:
    return BootstrapToken(id=token_id, secret_hash="0" * 64, group="sensors", uses_left=uses,
                          max_uses=uses, expires_at=expires_at, created_at=NOW, created_by="test")


def cert_row(serial: str, device_id: str | None = "dev-1", *,
             not_after: datetime = NOW + timedelta(days=30),
             status: str = CertificateStatus.ACTIVE) -> Certificate:
    return Certificate(serial=serial, device_id=device_id, fingerprint_sha256=serial.ljust(64, "0"),
                       not_before=NOW, not_after=not_after, status=status, issued_at=NOW,
                       pem="-----BEGIN CERTIFICATE-----")


def add_device(engine: Engine, device_id: str = "dev-1") -> None:
    with write_session(engine) as session:
        devices_db.create_device(session=session, device_id=device_id, group="sensors",
                                 status=DeviceStatus.ACTIVE, now=NOW)
        session.commit()


# -- migrations -------------------------------------------------------------------------------

def test_migrations_apply_twice(engine: Engine) -> None:
    migrate(engine)  # the fixture applied them once already
    migrate(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("0008",)]
        assert connection.execute(text("SELECT id, crl_number FROM crl_state")).all() == [(1, 0)]


def test_migrations_on_a_brand_new_sqlite_file(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'fleet.db'}", create=True)
    try:
        migrate(engine)
        migrate(engine)
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_engine: Engine, data_dir: Path) -> None:
    with sqlite_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    add_device(sqlite_engine)
    assert (data_dir / "fleet.db-wal").exists()


def test_sqlite_reader_is_not_blocked_by_an_open_write_transaction(
    sqlite_engine: Engine,
) -> None:
    add_device(sqlite_engine)
    with write_session(sqlite_engine) as writer:
        devices_db.create_device(session=writer, device_id="dev-2", group="sensors",
                                 status=DeviceStatus.ACTIVE, now=NOW)
        with new_session(sqlite_engine) as reader:  # WAL: readers see the last commit
            assert [d.id for d in devices_db.list_devices(session=reader)] == ["dev-1"]
        writer.commit()


# -- tokens -----------------------------------------------------------------------------------

def test_token_use_is_consumed_once(engine: Engine) -> None:
    with write_session(engine) as session:
        tokens_db.add_tokens(session=session, tokens=[token_row(uses=2)])
        session.commit()
    for expected in (True, True, False, False):
        with write_session(engine) as session:
            assert tokens_db.consume_token_use(session=session, token_id="0123456789abcdef",
                                               now=NOW) is expected
            session.commit()
    with new_session(engine) as session:
        row = tokens_db.get_token(session=session, token_id="0123456789abcdef")
        assert row is not None
        assert row.uses_left == 0


def test_expired_or_revoked_token_cannot_be_consumed(engine: Engine) -> None:
    with write_session(engine) as session:
        tokens_db.add_tokens(session=session, tokens=[
            token_row("aaaaaaaaaaaaaaaa", expires_at=NOW),
            token_row("bbbbbbbbbbbbbbbb")])
        tokens_db.revoke_tokens(session=session, token_ids=["bbbbbbbbbbbbbbbb"], now=NOW)
        session.commit()
    with write_session(engine) as session:
        for token_id in ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"):
            assert not tokens_db.consume_token_use(session=session, token_id=token_id, now=NOW)


def test_token_uses_cannot_go_negative_in_the_database(engine: Engine) -> None:
    with write_session(engine) as session:
        tokens_db.add_tokens(session=session, tokens=[token_row()])
        session.commit()
    with pytest.raises(IntegrityError, match="uses_left"), engine.begin() as connection:
        connection.execute(text("UPDATE bootstrap_tokens SET uses_left = uses_left - 2"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT uses_left FROM bootstrap_tokens")).scalar() == 1


def test_list_and_unused_tokens(engine: Engine) -> None:
    bound = token_row("dddddddddddddddd")
    bound.device_id = "dev-1"
    with write_session(engine) as session:
        tokens_db.add_tokens(session=session, tokens=[token_row(), bound])
        session.commit()
    with new_session(engine) as session:
        assert len(tokens_db.list_tokens(session=session)) == 2
        assert [t.id for t in tokens_db.list_tokens(session=session, device_id="dev-1")] == [
            "dddddddddddddddd"]
        assert tokens_db.unused_tokens_for_device(session=session, device_id="dev-1") == [
            "dddddddddddddddd"]


# -- revocation events and the CRL number ------------------------------------------------------

def test_revocation_event_ids_are_monotonic(engine: Engine) -> None:
    ids = []
    for i in range(6):
        with write_session(engine) as session:
            event = events_db.record_revocation(session=session, now=NOW, kind="revoked",
                                                serial=f"{i:x}", device_id="dev-1")
            session.commit()
            assert event.id is not None
            ids.append(event.id)
    assert ids == sorted(set(ids))
    with new_session(engine) as session:
        assert events_db.last_revocation_id(session=session) == ids[-1]
        after = events_db.revocations_after(session=session, after_id=ids[2])
        assert [e.id for e in after] == ids[3:]
        assert [e.serial for e in after] == ["3", "4", "5"]
        assert [e.id for e in events_db.revocations_after(session=session, after_id=0,
                                                          limit=2)] == ids[:2]
        assert events_db.revocations_after(session=session, after_id=ids[-1]) == []


def test_last_revocation_id_of_an_empty_registry_is_zero(engine: Engine) -> None:
    with new_session(engine) as session:
        assert events_db.last_revocation_id(session=session) == 0


def test_revocation_events_become_visible_in_id_order(engine: Engine) -> None:
    """A poller that remembers the last id it saw must never skip an event committed later."""
    first = write_session(engine)
    early = events_db.record_revocation(session=first, now=NOW, kind="revoked", serial="1")
    done = threading.Event()

    def second_writer() -> None:
        with write_session(engine) as session:
            events_db.record_revocation(session=session, now=NOW, kind="revoked", serial="2")
            session.commit()
        done.set()

    thread = threading.Thread(target=second_writer)
    thread.start()
    overtaken = done.wait(0.5)
    with new_session(engine) as poller:
        visible = [e.serial for e in events_db.revocations_after(session=poller, after_id=0)]
    first.commit()
    first.close()
    thread.join(10)
    assert not overtaken, "a later revocation event committed before an earlier one"
    assert visible == []
    with new_session(engine) as poller:
        events = events_db.revocations_after(session=poller, after_id=0)
        assert [e.serial for e in events] == ["1", "2"]
        assert events[0].id == early.id


def test_crl_number_increments_and_rolls_back(engine: Engine) -> None:
    numbers = []
    for _ in range(3):
        with write_session(engine) as session:
            numbers.append(events_db.next_crl_number(session=session))
            session.commit()
    assert numbers == [1, 2, 3]
    with write_session(engine) as session:
        assert events_db.next_crl_number(session=session) == 4
        session.rollback()
    with write_session(engine) as session:
        assert events_db.next_crl_number(session=session) == 4


def test_audit_events_are_recorded_in_order(engine: Engine) -> None:
    with write_session(engine) as session:
        for action in ("enroll", "reenroll", "device.revoke"):
            events_db.record_audit(session=session, now=NOW, action=action, outcome="ok",
                                   actor="test", device_id="dev-1", reason="r" * 600,
                                   detail={"n": 1, "when": NOW})
        session.commit()
    with new_session(engine) as session:
        rows = events_db.list_audit(session=session, device_id="dev-1")
        assert [r.action for r in rows] == ["enroll", "reenroll", "device.revoke"]
        assert all(r.reason is not None and len(r.reason) == 512 for r in rows)
        assert rows[0].detail == f'{{"n": 1, "when": "{NOW}"}}'
        assert [r.action for r in events_db.list_audit(session=session, action="reenroll")] == [
            "reenroll"]
        assert len(events_db.list_audit(session=session, limit=2)) == 2


# -- devices and certificates ----------------------------------------------------------------

def test_times_are_utc_aware_on_every_backend(engine: Engine) -> None:
    plus_two = timezone(timedelta(hours=2))
    with write_session(engine) as session:
        devices_db.create_device(session=session, device_id="dev-1", group="sensors",
                                 status=DeviceStatus.ACTIVE, now=NOW.astimezone(plus_two))
        session.commit()
    with new_session(engine) as session:
        device = devices_db.get_device(session=session, device_id="dev-1")
        assert device is not None
        assert device.created_at == NOW
        assert device.created_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with write_session(engine) as session, pytest.raises(StatementError, match="naive"):
        devices_db.create_device(session=session, device_id="dev-1", group="sensors",
                                 status=DeviceStatus.ACTIVE, now=datetime(2030, 1, 1))


def test_certificate_outlives_its_device_row(engine: Engine) -> None:
    """No foreign key (migration 0007): fleet device delete keeps the certificates."""
    add_device(engine)
    with write_session(engine) as session:
        certs_db.add_certificate(session=session, certificate=cert_row("aa"))
        session.commit()
    with write_session(engine) as session:
        devices_db.delete_device(session=session, device_id="dev-1")
        session.commit()
    with new_session(engine) as session:
        assert devices_db.get_device(session=session, device_id="dev-1") is None
        kept = certs_db.get_certificate(session=session, serial="aa")
        assert kept is not None
        assert kept.device_id == "dev-1"


def test_certificate_status_transitions(engine: Engine) -> None:
    add_device(engine)
    with write_session(engine) as session:
        for serial in ("a1", "a2"):
            certs_db.add_certificate(session=session, certificate=cert_row(serial))
        certs_db.add_certificate(session=session, certificate=cert_row(
            "a4", not_after=NOW - timedelta(seconds=1)))
        session.commit()
    with write_session(engine) as session:
        assert sorted(certs_db.supersede_active(session=session, device_id="dev-1",
                                                now=NOW)) == ["a1", "a2", "a4"]
        certs_db.add_certificate(session=session, certificate=cert_row("a3"))
        certs_db.revoke_certificates(session=session, serials=["a2", "a4"],
                                     reason="keyCompromise", now=NOW)
        session.commit()
    with new_session(engine) as session:
        status = {c.serial: c.status for c in certs_db.list_certificates(session=session)}
        assert status == {"a1": "superseded", "a2": "revoked", "a3": "active", "a4": "revoked"}
        assert sorted(certs_db.unrevoked_serials(session=session, device_id="dev-1")) == [
            "a1", "a3"]
        # An expired revoked certificate no longer belongs on the CRL.
        assert [c.serial for c in certs_db.revoked_certificates(session=session, now=NOW)] == [
            "a2"]
        a2 = certs_db.get_certificate(session=session, serial="a2")
        assert a2 is not None
        assert (a2.revocation_reason, a2.revoked_at) == ("keyCompromise", NOW)
        a1 = certs_db.get_certificate(session=session, serial="a1")
        assert a1 is not None
        assert a1.superseded_at == NOW
        assert [c.serial for c in certs_db.list_certificates(
            session=session, status="active")] == ["a3"]
        assert [c.serial for c in certs_db.list_certificates(
            session=session, expiring_before=NOW)] == ["a4"]


def test_device_queries(engine: Engine) -> None:
    add_device(engine, "dev-b")
    add_device(engine, "dev-a")
    with write_session(engine) as session:
        device = devices_db.get_device(session=session, device_id="dev-a", for_update=True)
        assert device is not None
        devices_db.set_device_status(session=session, device=device,
                                     status=DeviceStatus.SUSPENDED, reason="maintenance",
                                     now=NOW + timedelta(minutes=1))
        session.commit()
    with new_session(engine) as session:
        assert [d.id for d in devices_db.list_devices(session=session)] == ["dev-a", "dev-b"]
        suspended = devices_db.list_devices(session=session, status="suspended")
        assert [(d.id, d.status_reason) for d in suspended] == [("dev-a", "maintenance")]
        assert suspended[0].updated_at == NOW + timedelta(minutes=1)
        assert devices_db.list_devices(session=session, group="other") == []
        assert devices_db.get_device(session=session, device_id="nope") is None


# -- outages ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    pytest.param("postgresql+psycopg://fleet@127.0.0.1:1/fleet", id="postgres-port-closed"),
    pytest.param("sqlite:////proc/fleet-no-such-dir/fleet.db", id="sqlite-unopenable"),
])
def test_unreachable_database_is_registry_unavailable(url: str) -> None:
    try:
        engine = make_engine(url)
    except OSError:  # creating the SQLite parent directory already fails
        return
    try:
        with pytest.raises(RegistryUnavailableError, match="unavailable"), \
                unavailable_as_error(), Session(engine) as session:
            session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    finally:
        engine.dispose()
