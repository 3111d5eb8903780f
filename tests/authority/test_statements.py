"""The SQL statements of one enrollment and one renewal, as the EST service runs them (group
commit, a batch of one): a redundant query that comes back (reading a row twice, reading
back a row just written, a check that one joined read already answers) fails here.

Counted: every statement sent to the database, the savepoint, the audit chain's head and the
commit included. PostgreSQL also takes its advisory locks, the revocation-id lock and NOTIFY.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from fleet.authority import Authority
from fleet.authority.commits import GroupCommit

from .conftest import Fleet

MOST = {
    "sqlite": {"enroll": 12, "bound enroll": 12, "reenroll": 11},
    "postgresql": {"enroll": 13, "bound enroll": 12, "reenroll": 13},
}
"""The statements each may take, by database."""


@pytest.fixture
def committed(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet's authority with group commit, as the EST service runs it."""
    commits = GroupCommit(fleet.authority.engine, max_steps=1, max_wait=timedelta(0))
    authority = Authority(settings=fleet.authority.settings, engine=fleet.authority.engine,
                          ca=fleet.authority.ca, clock=fleet.clock, commits=commits)
    yield Fleet(authority, fleet.clock, fleet.secrets, fleet.keys)
    commits.close()


@contextmanager
def statements_of(fleet: Fleet) -> Iterator[list[str]]:
    """The statements the fleet's engine sends meanwhile, and its commits."""
    seen: list[str] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    def committed(_conn: Any) -> None:
        seen.append("COMMIT")

    engine = fleet.authority.engine
    event.listen(engine, "before_cursor_execute", executed)
    event.listen(engine, "commit", committed)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", executed)
        event.remove(engine, "commit", committed)


def check(fleet: Fleet, what: str, seen: list[str]) -> None:
    most = MOST[fleet.authority.engine.dialect.name][what]
    assert len(seen) <= most, f"{what} took {len(seen)} statements:\n" + "\n".join(seen)


def test_enrollment_of_a_new_device(committed: Fleet) -> None:
    token, csr = committed.token(), committed.csr("dev-1")
    with statements_of(committed) as seen:
        committed.enroll("dev-1", token, csr=csr)
    check(committed, "enroll", seen)
    assert sum(s.startswith("SELECT bootstrap_tokens.") for s in seen) == 1


def test_enrollment_with_a_token_bound_to_the_device(committed: Fleet) -> None:
    token, csr = committed.token(device_id="dev-2"), committed.csr("dev-2")
    with statements_of(committed) as seen:
        committed.enroll("dev-2", token, csr=csr)
    check(committed, "bound enroll", seen)


def test_renewal(committed: Fleet) -> None:
    issued = committed.enroll("dev-1")
    csr = committed.csr("dev-1")
    with statements_of(committed) as seen:
        committed.reenroll(issued.certificate, csr=csr)
    check(committed, "reenroll", seen)
    assert sum(s.startswith("SELECT certificates.") for s in seen) == 1
