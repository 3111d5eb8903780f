"""Broker refusals are audited, at most audit_refusals_per_minute rows a minute."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine

from fleet.authority import Authority
from fleet.broker.backend import Audit, Backend
from fleet.errors import IdentityError

from .conftest import Enroll, StartBroker
from .helpers import Client, audit_events, wait_until

IDENTIFIER_REJECTED = 2


def test_refusal_flood_audited_up_to_the_limit(enroll: Enroll, start_broker: StartBroker,
                                               sqlite_engine: Engine) -> None:
    broker = start_broker(audit_refusals_per_minute="5")
    enroll("victim")
    attacker = enroll("attacker")
    for _ in range(12):
        client = Client(broker.port, attacker, client_id="victim")
        assert client.connect() == IDENTIFIER_REJECTED
        client.close()
    assert wait_until(lambda: len(audit_events(sqlite_engine, "broker.connect")) == 5)
    assert wait_until(lambda: broker.connection_count() == 0)
    assert len(audit_events(sqlite_engine, "broker.connect")) == 5


def test_suppressed_refusals_are_counted_in_the_next_minute(sqlite_authority: Authority,
                                                            sqlite_engine: Engine) -> None:
    now = [0.0]

    async def flood() -> None:
        backend = Backend(sqlite_authority, workers=1)
        audit = Audit(backend, per_minute=2, clock=lambda: now[0])
        for _ in range(5):
            audit.refused("broker.connect", IdentityError("spoofed client id"))
        now[0] = 61.0
        audit.refused("broker.connect", IdentityError("spoofed client id"))
        await audit.flush()
        backend.close()

    asyncio.run(flood())
    assert len(audit_events(sqlite_engine, "broker.connect")) == 3
    (summary,) = audit_events(sqlite_engine, "broker.audit")
    assert "3 further broker events" in (summary.reason or "")
