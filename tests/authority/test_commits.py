"""Group commit (fleet.authority.commits): concurrent enrollments and renewals share one
transaction; each is answered only after the commit that holds its rows."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session

from fleet.authority import Authority, Issued
from fleet.authority.commits import GroupCommit
from fleet.errors import FleetError, RegistryUnavailableError, TokenError
from fleet.registry import events as events_db

from .conftest import Fleet

WAIT = 30.0
"""How long a test waits for what it expects (a deadline, never a sleep)."""


@pytest.fixture
def batched(fleet: Fleet) -> Iterator[Callable[[int], Fleet]]:
    """Make a Fleet whose authority commits in batches of exactly *size* steps: the
    committer waits (up to WAIT) until that many have arrived."""
    made: list[GroupCommit] = []

    def make(size: int) -> Fleet:
        commits = GroupCommit(fleet.authority.engine, max_steps=size,
                              max_wait=timedelta(seconds=WAIT))
        made.append(commits)
        authority = Authority(settings=fleet.authority.settings, engine=fleet.authority.engine,
                              ca=fleet.authority.ca, clock=fleet.clock, commits=commits)
        return Fleet(authority, fleet.clock, fleet.secrets, fleet.keys)

    yield make
    for commits in made:
        commits.close()


def together(calls: list[Callable[[], Any]]) -> list[Future[Any]]:
    """Start every call at once, in threads; return their futures once all are done."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
    return futures


@contextmanager
def commits_of(fleet: Fleet) -> Iterator[list[int]]:
    """Count the commits of the fleet's engine (a list holding one number)."""
    count = [0]

    def counted(_connection: Any) -> None:
        count[0] += 1

    event.listen(fleet.authority.engine, "commit", counted)
    try:
        yield count
    finally:
        event.remove(fleet.authority.engine, "commit", counted)


def test_a_refused_member_of_a_batch_does_not_abort_the_others(
        fleet: Fleet, batched: Callable[[int], Fleet]) -> None:
    used = fleet.token()
    fleet.enroll("dev-0", used)
    tokens = [fleet.token() for _ in range(3)]
    group = batched(4)
    with commits_of(group) as commits:
        futures = together([functools.partial(group.enroll, f"dev-{i + 1}", t)
                            for i, t in enumerate(tokens)]
                           + [functools.partial(group.enroll, "dev-9", used)])
    issued = [f.result() for f in futures[:3]]
    assert all(isinstance(i, Issued) for i in issued)
    with pytest.raises(TokenError, match="already used"):
        futures[3].result()
    assert commits[0] == 1, "the four requests shared one transaction"
    assert fleet.device("dev-9") is None
    for number, one in enumerate(issued, start=1):
        assert fleet.certificate(one.record.serial) is not None
        assert (device := fleet.device(f"dev-{number}")) is not None
        assert device.status == "active"
    outcomes = sorted((e.device_id, e.outcome) for e in fleet.audit()[-4:])
    assert outcomes == [("dev-1", "ok"), ("dev-2", "ok"), ("dev-3", "ok"),
                        ("dev-9", "refused")]
    with fleet.session() as session:
        assert events_db.verify_audit_chain(session=session).problem is None


def test_nothing_is_answered_before_its_commit_and_a_failed_commit_fails_every_member(
        fleet: Fleet, batched: Callable[[int], Fleet]) -> None:
    tokens = [fleet.token() for _ in range(3)]
    before, audit_before = fleet.snapshot(), len(fleet.audit())
    group = batched(3)
    futures: list[Future[Any]] = []
    answered_at_commit: list[bool] = []
    started = threading.Event()

    def failing_commit(_session: Session) -> None:
        assert started.wait(WAIT)
        answered_at_commit.extend(f.done() for f in futures)
        raise RuntimeError("the disk is full")

    event.listen(Session, "before_commit", failing_commit)
    try:
        with ThreadPoolExecutor(3) as pool:
            futures += [pool.submit(group.enroll, f"dev-{i}", t) for i, t in enumerate(tokens)]
            started.set()
    finally:
        event.remove(Session, "before_commit", failing_commit)
    assert answered_at_commit == [False, False, False]
    for future in futures:
        with pytest.raises(RegistryUnavailableError, match="the disk is full"):
            future.result()
    assert fleet.snapshot() == before, "a failed commit left rows behind"
    assert len(fleet.audit()) == audit_before
    for number, token in enumerate(tokens):  # no token was used
        fleet.enroll(f"dev-{number}", token)


def test_a_batch_holds_at_most_max_steps_and_waits_at_most_max_wait(fleet: Fleet) -> None:
    """A committer that would wait (up to WAIT) for a full batch of two commits four steps
    as two batches of two; one that waits 20 ms for 64 commits a lone step alone."""
    sessions: list[int] = []
    lock = threading.Lock()

    def step(session: Session) -> int:
        with lock:
            sessions.append(id(session))
            return len(sessions)

    def refused(_session: Session, _error: FleetError) -> None:
        raise AssertionError("no step refuses")

    pairs = GroupCommit(fleet.authority.engine, max_steps=2, max_wait=timedelta(seconds=WAIT))
    lone = GroupCommit(fleet.authority.engine, max_steps=64,
                       max_wait=timedelta(milliseconds=20))
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(pairs.apply, step, refused=refused) for _ in range(4)]
            assert sorted(f.result(timeout=WAIT) for f in futures) == [1, 2, 3, 4]
        assert [sessions.count(s) for s in dict.fromkeys(sessions)] == [2, 2]
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(lone.apply, step, refused=refused).result(timeout=WAIT) == 5
    finally:
        pairs.close()
        lone.close()


def test_a_closed_committer_refuses_new_steps(fleet: Fleet) -> None:
    commits = GroupCommit(fleet.authority.engine, max_steps=4,
                          max_wait=timedelta(milliseconds=2))
    assert commits.apply(lambda _session: 7, refused=lambda _s, _e: None) == 7
    commits.close()
    with pytest.raises(RegistryUnavailableError, match="shutting down"):
        commits.apply(lambda _session: 7, refused=lambda _s, _e: None)


def test_a_batch_of_renewals_supersedes_each_certificate_once(
        fleet: Fleet, batched: Callable[[int], Fleet]) -> None:
    first = fleet.enroll("dev-1")
    group = batched(3)
    futures = together([lambda: group.reenroll(first.certificate)] * 3)
    won = [f for f in futures if f.exception() is None]
    assert len(won) == 1
    for lost in futures:
        if lost is not won[0]:
            with pytest.raises(FleetError, match=r"is superseded|already renewed"):
                lost.result()
    assert [c.serial for c in fleet.certificates("dev-1") if c.status == "active"] == [
        won[0].result().record.serial]
    with fleet.session() as session:
        assert events_db.verify_audit_chain(session=session).problem is None
