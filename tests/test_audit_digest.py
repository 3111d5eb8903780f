"""Refusals without a verified identity fold into one aggregate per action, actor and interval."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from fleet.audit import Aggregate, RefusalDigest, actor_of
from fleet.authority import Authority
from fleet.registry import events as events_db
from fleet.registry import make_engine


def clock_from(start: datetime) -> tuple[list[datetime], RefusalDigest]:
    now = [start]
    return now, RefusalDigest(interval=60, max_sources=2, clock=lambda: now[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refusals_of_one_source_fold_into_one_aggregate() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now, digest = clock_from(start)
    digest.add("enroll", actor=actor_of("est", "192.0.2.1"), reason="bad token", kind="basic")
    now[0] += timedelta(seconds=5)
    digest.add("enroll", actor=actor_of("est", "192.0.2.1"), reason="another reason")
    [aggregate] = digest.drain()
    assert aggregate == Aggregate(action="enroll", actor="est:192.0.2.1", reason="bad token",
                                  first=start, last=start + timedelta(seconds=5), count=2,
                                  detail={"kind": "basic"})
    assert digest.drain() == []  # the next interval starts empty


def test_sources_beyond_the_bound_share_one_overflow_aggregate() -> None:
    _, digest = clock_from(datetime(2026, 1, 1, tzinfo=UTC))
    for index in range(10):
        digest.add("broker.handshake", actor=actor_of("broker", f"192.0.2.{index}"),
                   reason="no certificate")
    aggregates = {a.actor: a.count for a in digest.drain()}
    assert aggregates == {"broker:192.0.2.0": 1, "broker:192.0.2.1": 1, "broker:*": 8}


def test_subjects_are_kept_apart() -> None:
    _, digest = clock_from(datetime(2026, 1, 1, tzinfo=UTC))
    for topic in ("a", "b", "a"):
        digest.add("broker.publish", actor="broker:device d1", reason=f"may not {topic}",
                   subject=topic)
    assert sorted((a.reason, a.count) for a in digest.drain()) == [("may not a", 2),
                                                                   ("may not b", 1)]


def test_aggregates_are_recorded_with_their_count(sqlite_authority: Authority) -> None:
    _, digest = clock_from(datetime(2026, 1, 1, tzinfo=UTC))
    for _ in range(3):
        digest.add("enroll", actor="est:192.0.2.9", reason="bad token")

    async def flush_on_stop() -> None:
        digest.start(recorded)
        await digest.stop(recorded)

    async def recorded(aggregates: list[Aggregate]) -> None:
        sqlite_authority.record_refusals(aggregates)

    asyncio.run(flush_on_stop())
    with Session(sqlite_authority.engine) as session:
        [event] = events_db.list_audit(session=session, action="enroll")
    assert (event.outcome, event.actor, event.reason) == ("refused", "est:192.0.2.9",
                                                          "bad token")
    assert '"count": 3' in (event.detail or "")


def test_aggregates_a_flush_could_not_record_are_kept_for_the_next(
    sqlite_authority: Authority, caplog: pytest.LogCaptureFixture,
) -> None:
    """The registry is unavailable at one flush: its aggregates are folded into the next
    interval's (counts added, nothing lost) and the failure is one log line, no traceback."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now, digest = clock_from(start)
    digest.add("enroll", actor="est:192.0.2.9", reason="bad token")
    digest.add("enroll", actor="est:192.0.2.9", reason="bad token")
    engine = make_engine(f"postgresql+psycopg://fleet@127.0.0.1:{free_port()}/fleet")
    down = Authority(settings=sqlite_authority.settings, engine=engine, ca=sqlite_authority.ca)

    async def unavailable(aggregates: list[Aggregate]) -> None:
        down.record_refusals(aggregates)

    async def recorded(aggregates: list[Aggregate]) -> None:
        sqlite_authority.record_refusals(aggregates)

    try:
        with caplog.at_level(logging.WARNING, logger="fleet.audit"):
            asyncio.run(digest.stop(unavailable))
    finally:
        engine.dispose()
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.exc_info is None
    assert "kept for the next flush: registry database unavailable" in warning.getMessage()
    now[0] += timedelta(seconds=90)
    digest.add("enroll", actor="est:192.0.2.9", reason="bad token")
    asyncio.run(digest.stop(recorded))
    with Session(sqlite_authority.engine) as session:
        [event] = events_db.list_audit(session=session, action="enroll")
    detail = json.loads(event.detail or "{}")
    assert (detail["count"], detail["first"], detail["last"]) == (
        3, start.isoformat(), (start + timedelta(seconds=90)).isoformat())
