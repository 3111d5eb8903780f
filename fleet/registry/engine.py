"""Engine set-up for SQLite (WAL) and PostgreSQL, and applying migrations."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.base import Executable
from sqlmodel import Session, create_engine

from fleet.errors import RegistryUnavailableError
from fleet.files import private_file

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


BUSY_TIMEOUT = timedelta(seconds=30)
"""How long an SQLite statement waits for a lock another connection holds (the default of
database.busy_timeout)."""


def make_engine(url: str, *, create: bool = False, pool_size: int = 10,
                busy_timeout: timedelta = BUSY_TIMEOUT) -> Engine:
    """An engine for *url*; SQLite gets WAL, *busy_timeout* and foreign keys.

    An SQLite file is never created by opening it (a connection to a missing one fails:
    RegistryUnavailableError under unavailable_as_error); *create*, for ``fleet init``, makes
    it first, 0600 in a 0700 directory.
    """
    if url.startswith("sqlite"):
        path = make_url(url).database
        seconds = busy_timeout.total_seconds()
        connect_args: dict[str, Any] = {"timeout": seconds, "check_same_thread": False}
        options: dict[str, Any] = {"connect_args": connect_args}
        if path and path != ":memory:" and not path.startswith("file:"):
            if create:
                # Created 0600 before SQLite opens it: SQLite gives -wal and -shm the same mode.
                private_file(Path(path))
            # mode=rw: read and write the file, never create it.
            options = {"creator": functools.partial(
                sqlite3.connect, f"file:{quote(path)}?mode=rw", uri=True, **connect_args)}
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, **options)
        event.listen(engine, "connect", functools.partial(
            _sqlite_pragmas, busy_timeout_ms=max(1, round(seconds * 1000))))
        # pysqlite's own transaction handling is disabled (see _sqlite_pragmas); we issue BEGIN
        # ourselves. Write transactions take the write lock up front (BEGIN IMMEDIATE) so one
        # that reads then writes cannot fail on lock upgrade; reads stay concurrent under WAL.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                         connect_args={"connect_timeout": 5})


WRITE = {"fleet_write": True}
"""Execution options marking a connection that will write (BEGIN IMMEDIATE on SQLite)."""


def _sqlite_begin(connection: Any) -> None:
    immediate = connection.get_execution_options().get("fleet_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, busy_timeout_ms: int) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (the WAL synced) before it returns, so nothing answered as
    # done is lost on a power cut; NORMAL would lose the last commits. Group commit
    # (fleet.authority.commits) shares that sync among concurrent enrollments.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
    cursor.close()


def has_schema(engine: Engine) -> bool:
    """Whether the registry was created (by ``fleet init``): its migration table exists."""
    with unavailable_as_error(), engine.connect() as connection:
        return engine.dialect.has_table(connection, "alembic_version")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    from alembic import command  # imported here: alembic is slow to import and rarely needed
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with unavailable_as_error(), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def unavailable_as_error() -> Iterator[None]:
    """Turn "cannot reach the database" driver errors into RegistryUnavailableError.

    So is an SQLite lock another connection held for longer than the busy timeout: the
    statement waited as long as it was allowed to, as it would wait for an unreachable server.
    SQLite's other "database is locked" errors come at once, without waiting:
    SQLITE_BUSY_SNAPSHOT (a read transaction that tried to write after another writer
    committed) and SQLITE_LOCKED are defects in how a transaction was begun, not outages, and
    stay unconverted so that they surface (the concurrency tests count only FleetErrors as
    refusals; anything else fails them).
    """
    try:
        yield
    except (OperationalError, SAInterfaceError) as exc:
        text = (str(exc.orig) if exc.orig is not None else str(exc)).splitlines()[0]
        code = getattr(exc.orig, "sqlite_errorname", "")
        if code == "SQLITE_BUSY_SNAPSHOT" or code.startswith("SQLITE_LOCKED"):
            raise
        if code == "SQLITE_BUSY":
            text += " (held by another connection beyond the busy timeout)"
        raise RegistryUnavailableError(f"registry database unavailable: {text}") from exc


def execute(session: Session, statement: Executable, **params: Any) -> CursorResult[Any]:
    """Run a prebuilt Core statement on the session's connection.

    The hot paths (enrollment, renewal, admission) build their statements once at import and
    bind parameters per call: no ORM unit of work, no per-call statement construction.
    """
    return _connection(session).execute(statement, params)


_CONNECTION = "fleet.connection"


def _connection(session: Session) -> Connection:
    """The session's connection, looked up once per transaction (Session.connection() costs
    more than a short statement)."""
    transaction = session.get_transaction()
    cached = session.info.get(_CONNECTION)
    if cached is not None and transaction is not None and cached[0] is transaction:
        return cached[1]  # type: ignore[no-any-return]
    connection = session.connection()
    session.info[_CONNECTION] = (session.get_transaction(), connection)
    return connection


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def write_session(engine: Engine) -> Session:
    """A session whose transaction is a write transaction from its first statement."""
    new = Session(engine, expire_on_commit=False)
    new.connection(execution_options=WRITE)
    return new
