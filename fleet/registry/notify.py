"""Revocation events pushed: PostgreSQL's LISTEN/NOTIFY wakes whoever follows them.

Every follower of the revocation events (the broker's watcher, the hooks of other brokers,
``fleet crl --watch``) polls the table for events after the last id it applied, every
``broker.revocation_poll_interval``. On PostgreSQL each event is also announced:
:func:`announce` sends ``NOTIFY`` on :data:`CHANNEL` with the event's id, inside the
transaction that records it, so the notification is delivered when that transaction commits
and never when it rolls back. A follower waits with :meth:`Wakeup.wait`, which returns at the
next notification or at the end of the interval, whichever comes first, and then polls.

The poll stays the source of truth: a notification only says "poll now", the events are read
from the table by id, so a notification lost (a listening connection that dropped) delays an
event by at most the interval, never loses it. For the same reason being woken confirms
nothing: the broker's fail-closed staleness (``broker.revocation_max_staleness``) counts from
the last successful poll only.

The listening connection is psycopg's async connection (``LISTEN``, ``notifies()``) on the
follower's event loop. When it fails (the server restarts, the backend is terminated, the
network drops) it is opened again at once, then after a doubling backoff up to
:data:`MAX_RECONNECT_DELAY` while PostgreSQL stays away; each time it listens again the
follower is woken once, since what was announced meanwhile was not heard. A connection that
goes silent without an error is found by a ``SELECT 1`` every :data:`PING_INTERVAL`. On
SQLite there is nothing to listen to: :meth:`Wakeup.wait` waits out the interval.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fleet.tasks import cancel

log = logging.getLogger(__name__)

CHANNEL = "fleet_revocation_events"
PING_INTERVAL = 30.0
"""Seconds without a notification after which the listening connection is checked."""
PING_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5
FIRST_RECONNECT_DELAY = 0.25
MAX_RECONNECT_DELAY = 10.0
APPLICATION_NAME = "fleet-revocation-listener"
"""How a listening connection shows in ``pg_stat_activity``."""


def announce(session: Session, event_id: int) -> None:
    """Announce revocation event *event_id* when *session*'s transaction commits
    (PostgreSQL only: the caller checks the dialect)."""
    session.connection().execute(select(func.pg_notify(CHANNEL, str(event_id))))


class Wakeup:
    """What a follower of the revocation events waits on between two polls."""

    def __init__(self, conninfo: str | None, *, name: str) -> None:
        self._conninfo = conninfo
        self._name = name
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = False
        """Whether a notification would wake the follower now."""
        self.reconnects = 0
        """Times the listening connection was opened again after it failed."""
        self.backend_pid: int | None = None
        """The PostgreSQL backend of the listening connection (``pg_stat_activity.pid``)."""

    @classmethod
    def of(cls, engine: Engine, *, name: str, listen: bool = True) -> Wakeup:
        """Listening on *engine*'s database if it is PostgreSQL and *listen*
        (``broker.revocation_push``); *name* is the follower's, for the logs."""
        if engine.dialect.name != "postgresql" or not listen:
            return cls(None, name=name)
        url = engine.url.set(drivername="postgresql")
        return cls(url.render_as_string(hide_password=False), name=name)

    @property
    def pushed(self) -> bool:
        """Whether this registry announces its events (PostgreSQL)."""
        return self._conninfo is not None

    def start(self) -> None:
        """Start listening (in the background; the first notification heard wakes)."""
        if self._conninfo is not None and self._task is None:
            self._task = asyncio.create_task(self._listen(self._conninfo),
                                             name=f"{self._name}-listen")

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
        self.listening = False

    async def wait(self, timeout: float) -> bool:
        """Until the next notification or *timeout* seconds, whichever comes first; True when
        woken. A notification heard while the follower was polling wakes this at once."""
        if not self._woken.is_set():
            try:
                await asyncio.wait_for(self._woken.wait(), timeout)
            except TimeoutError:
                return False
        self._woken.clear()
        return True

    async def _listen(self, conninfo: str) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                        application_name=APPLICATION_NAME) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = connection.info.backend_pid
                    if failures:
                        self.reconnects += 1
                    (log.info if failures else log.debug)(
                        "%s listens for revocation events%s (backend %d)", self._name,
                        " again" if failures else "", self.backend_pid)
                    failures, self.listening = 0, True
                    self._woken.set()  # what was announced before LISTEN was not heard
                    await self._heard(connection)
            except Exception as exc:  # anything but cancellation: listen again, never stop
                was_listening, self.listening = self.listening, False
                failures += 1
                delay = 0.0 if was_listening else min(
                    FIRST_RECONNECT_DELAY * 2 ** (failures - 1), MAX_RECONNECT_DELAY)
                expected = isinstance(exc, psycopg.Error | OSError | TimeoutError)
                log.warning("%s cannot listen for revocation events (%s: %s); polling only "
                            "until it can, next attempt in %gs", self._name,
                            type(exc).__name__, " ".join(str(exc).split()), delay,
                            exc_info=not expected)
                await asyncio.sleep(delay)

    async def _heard(self, connection: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Wake the follower at each notification; returns only by raising."""
        while True:
            async for _ in connection.notifies(timeout=PING_INTERVAL):
                self._woken.set()
            await asyncio.wait_for(connection.execute("SELECT 1"), PING_TIMEOUT)
