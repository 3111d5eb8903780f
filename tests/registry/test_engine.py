"""Engine set-up: the SQLite busy timeout, which lock errors are outages, and file modes."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from registry_outage import registry_lock
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from fleet.errors import RegistryUnavailableError
from fleet.registry import has_schema, make_engine, migrate, unavailable_as_error
from fleet.registry.engine import session as new_session
from fleet.registry.engine import write_session
from fleet.settings import load_settings


def test_busy_timeout_setting_defaults_to_30s_and_reaches_sqlite(tmp_path: Path) -> None:
    assert load_settings(environ={}).database_busy_timeout == timedelta(seconds=30)
    settings = load_settings(environ={"FLEET_DATABASE_BUSY_TIMEOUT": "250ms"})
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}", create=True,
                         busy_timeout=settings.database_busy_timeout)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 250
    finally:
        engine.dispose()


def test_sqlite_commits_are_durable_wal_with_synchronous_full(tmp_path: Path) -> None:
    """A commit is synced to disk before it returns (NORMAL would lose the last commits on a
    power cut): what EST answers 200 for survives."""
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}", create=True)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        engine.dispose()


def test_lock_held_beyond_the_busy_timeout_is_registry_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}", create=True,
                         busy_timeout=timedelta(milliseconds=200))
    try:
        migrate(engine)
        with registry_lock(tmp_path / "fleet.db"), \
                pytest.raises(RegistryUnavailableError,
                              match=r"database is locked \(held by another connection "
                                    r"beyond the busy timeout\)"), \
                unavailable_as_error(), write_session(engine):
            pass
    finally:
        engine.dispose()


def test_stale_snapshot_write_stays_an_operational_error(tmp_path: Path) -> None:
    """A read transaction that writes after another writer committed fails at once: a
    defect in how the transaction began, not an outage, so it is not hidden as one."""
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}", create=True)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with new_session(engine) as reader:
            reader.execute(text("SELECT count(*) FROM t")).all()
            with write_session(engine) as writer:
                writer.execute(text("INSERT INTO t VALUES (1)"))
                writer.commit()
            with pytest.raises(OperationalError, match="locked") as info, unavailable_as_error():
                reader.execute(text("INSERT INTO t VALUES (2)"))
        assert info.value.orig.sqlite_errorname == "SQLITE_BUSY_SNAPSHOT"  # type: ignore[union-attr]
    finally:
        engine.dispose()


@pytest.mark.usefixtures("umask_022")
def test_sqlite_database_wal_and_shm_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "data" / "fleet.db"
    engine = make_engine(f"sqlite:///{path}", create=True)
    try:
        migrate(engine)
        with engine.connect() as connection:  # open: -wal and -shm exist
            connection.exec_driver_sql("SELECT count(*) FROM devices").all()
            found = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        engine.dispose()
    assert found == {"fleet.db": 0o600, "fleet.db-wal": 0o600, "fleet.db-shm": 0o600}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_opening_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    """Only fleet init creates the registry: an engine on a file that is not there fails to
    connect, as for a database server that is not there, and leaves no file or directory."""
    path = tmp_path / "fleet-data" / "fleet.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with pytest.raises(RegistryUnavailableError, match="unable to open database file"), \
                unavailable_as_error(), engine.connect():
            pass
    finally:
        engine.dispose()
    assert list(tmp_path.iterdir()) == []


def test_sqlite_file_name_is_not_read_as_uri_syntax(tmp_path: Path) -> None:
    """The file is opened by URI (mode=rw): a space or a ``#`` in its path is quoted, so the
    engine opens the file it was given, not one cut at the ``#``."""
    path = tmp_path / "data #1" / "fleet.db"
    engine = make_engine(f"sqlite:///{path}", create=True)
    try:
        migrate(engine)
        assert has_schema(engine)
    finally:
        engine.dispose()
    assert [p.name for p in tmp_path.iterdir()] == ["data #1"]
    assert path.stat().st_size > 0
