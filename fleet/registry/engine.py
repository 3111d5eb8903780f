"""Engine set-up for SQLite (WAL) and PostgreSQL, and applying migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import CursorResult, Engine, make_url
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.base import Executable
from sqlmodel import Session, create_engine

from fleet.errors import RegistryUnavailableError
from fleet.files import private_file

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for *url*; SQLite gets WAL, a busy timeout, foreign keys and a 0600 file."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            # Created 0600 before SQLite opens it: SQLite gives -wal and -shm the same mode.
            private_file(Path(path))
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size, max_overflow=pool_size,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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
    """Turn "cannot reach the database" driver errors into RegistryUnavailableError."""
    try:
        yield
    except (OperationalError, SAInterfaceError) as exc:
        text = str(exc.orig) if exc.orig is not None else str(exc)
        if "locked" in text and "database" in text:
            raise
        raise RegistryUnavailableError(f"registry database unavailable: {text.splitlines()[0]}") \
            from exc


def execute(session: Session, statement: Executable, **params: Any) -> CursorResult[Any]:
    """Run a prebuilt Core statement on the session's connection.

    The hot paths (enrollment, renewal, admission) build their statements once at import and
    bind parameters per call: no ORM unit of work, no per-call statement construction.
    """
    return session.connection().execute(statement, params)


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def write_session(engine: Engine) -> Session:
    """A session whose transaction is a write transaction from its first statement."""
    new = Session(engine, expire_on_commit=False)
    new.connection(execution_options=WRITE)
    return new
