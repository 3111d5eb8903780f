"""Revocation events announced with NOTIFY on PostgreSQL (fleet.registry.notify): delivered on
commit only, heard by a Wakeup that listens again after its connection is killed; SQLite has
no announcements and a Wakeup there only waits out the interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from fleet.registry import events as events_db
from fleet.registry import make_engine, migrate, utcnow
from fleet.registry.engine import write_session
from fleet.registry.notify import CHANNEL, Wakeup


@pytest.fixture
def pg_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=2)
    migrate(engine)
    yield engine
    engine.dispose()


def conninfo(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def record(engine: Engine, device_id: str, *, commit: bool = True) -> int:
    with write_session(engine) as session:
        event = events_db.record_revocation(session=session, now=utcnow(), kind="revoked",
                                            device_id=device_id)
        assert event.id is not None
        if commit:
            session.commit()
        else:
            session.rollback()
        return event.id


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_notify_is_sent_on_commit_with_the_event_id_and_never_on_rollback(
        pg_engine: Engine) -> None:
    with psycopg.connect(conninfo(pg_engine), autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        rolled_back = record(pg_engine, "d1", commit=False)
        committed = record(pg_engine, "d2")
        # Notifications arrive in commit order: had the rolled-back event been announced,
        # its id would come first.
        heard = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
        assert heard == [str(committed)]
        assert rolled_back != committed


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_wakeup_is_woken_by_a_commit_and_listens_again_after_its_backend_is_terminated(
        pg_engine: Engine) -> None:
    async def main() -> None:
        wakeup = Wakeup.of(pg_engine, name="test follower")
        assert wakeup.pushed
        wakeup.start()
        try:
            await until(lambda: wakeup.listening)
            assert await wakeup.wait(0)  # woken once on listening: nothing heard before
            assert not await wakeup.wait(0.05)
            await asyncio.to_thread(record, pg_engine, "d1")
            assert await wakeup.wait(10)

            killed = wakeup.backend_pid
            with pg_engine.begin() as connection:
                assert connection.execute(text("SELECT pg_terminate_backend(:pid)"),
                                          {"pid": killed}).scalar_one()
            await until(lambda: wakeup.reconnects == 1 and wakeup.listening)
            assert wakeup.backend_pid != killed
            assert await wakeup.wait(0)  # listening again: woken, as after the first LISTEN
            assert not await wakeup.wait(0.05)
            await asyncio.to_thread(record, pg_engine, "d2")
            assert await wakeup.wait(10)
        finally:
            await wakeup.close()
        assert not wakeup.listening

    asyncio.run(main())


def test_wakeup_on_sqlite_never_listens_and_waits_out_the_interval(
        sqlite_engine: Engine) -> None:
    async def main() -> None:
        wakeup = Wakeup.of(sqlite_engine, name="test follower")
        assert not wakeup.pushed
        wakeup.start()
        record(sqlite_engine, "d1")
        started = time.monotonic()
        assert not await wakeup.wait(0.2)
        assert time.monotonic() - started >= 0.2
        assert not wakeup.listening
        await wakeup.close()

    asyncio.run(main())
