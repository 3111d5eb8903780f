"""Refusals without a verified identity fold into one aggregate per action, actor and interval."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from fleet.audit import Aggregate, RefusalDigest, actor_of
from fleet.authority import Authority
from fleet.registry import events as events_db


def clock_from(start: datetime) -> tuple[list[datetime], RefusalDigest]:
    now = [start]
    return now, RefusalDigest(interval=60, max_sources=2, clock=lambda: now[0])


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
