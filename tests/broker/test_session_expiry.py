"""Stored sessions expire after ``broker.session_expiry`` of their client being away
(fleet.broker.session.Away): one timer for the oldest, restarted when a client leaves again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fleet.broker.session import Away

from .conftest import Enroll, StartBroker
from .helpers import Clients, wait_until


def test_away_expires_sessions_in_the_order_clients_left() -> None:
    async def scenario() -> list[list[str]]:
        expired: list[str] = []
        seen: list[list[str]] = []
        session: Any = object()
        away = Away(after=0.2, expire=lambda client_id, _: expired.append(client_id))
        away.left("a", session)
        away.left("b", session)
        away.left("c", session)
        away.back("c")  # reconnected: never expires
        await asyncio.sleep(0.12)
        away.left("a", session)  # connected and left again: its time starts over
        await asyncio.sleep(0.12)  # b is due (0.2), a is not (0.32)
        seen.append(list(expired))
        await asyncio.sleep(0.15)
        seen.append(list(expired))
        return seen

    assert asyncio.run(scenario()) == [["b"], ["b", "a"]]


def test_away_counts_time_its_client_was_already_away() -> None:
    # A session restored after a restart comes in with the time its client has been away.
    async def scenario() -> tuple[list[str], float]:
        expired: list[str] = []
        session: Any = object()
        away = Away(after=0.3, expire=lambda client_id, _: expired.append(client_id))
        away.left("restored", session, away_for=0.25)
        away.left("new", session)
        already = away.away_for("restored")
        await asyncio.sleep(0.15)
        return list(expired), already

    expired, already = asyncio.run(scenario())
    assert expired == ["restored"]
    assert already >= 0.25


def test_a_stored_session_expires_once_its_client_stays_away(
        enroll: Enroll, start_broker: StartBroker) -> None:
    broker = start_broker(session_expiry="500ms")
    credentials = enroll("d1")
    with Clients(broker) as clients:
        clients.connect(credentials, clean_session=False).close()
        assert wait_until(lambda: broker.connection_count() == 0)
        left = time.monotonic()
        assert "d1" in broker.session_ids()
        assert wait_until(lambda: "d1" not in broker.session_ids(), timeout=3)
        assert 0.4 < time.monotonic() - left < 2
        assert not clients.connect(credentials, clean_session=False).session_present
