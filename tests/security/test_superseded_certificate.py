"""A renewed certificate's predecessor is usable for certificates.superseded_grace (a
make-before-break reconnect), then the broker drops its live connection and refuses it."""

from __future__ import annotations

import pytest
from broker.conftest import Enroll, StartBroker, rekey
from broker.helpers import Client, audit_events, wait_until
from sqlalchemy.engine import Engine

from fleet.authority import Authority

pytestmark = pytest.mark.slow


def test_superseded_certificate_dropped_and_refused_when_its_grace_ends(
        enroll: Enroll, start_broker: StartBroker, sqlite_authority: Authority,
        sqlite_engine: Engine) -> None:
    broker = start_broker(superseded_grace="2s")
    old = enroll("d1")
    live = Client(broker.port, old)
    try:
        assert live.connect() == 0
        renewed = rekey(sqlite_authority, old)
        assert not live.disconnected.wait(1.0)  # within its grace: still connected
        assert live.disconnected.wait(3.0)  # dropped when the grace ends
    finally:
        live.close()
    late = Client(broker.port, old)
    assert late.connect() == 5
    late.close()
    current = Client(broker.port, renewed)
    assert current.connect() == 0
    current.close()
    assert wait_until(lambda: any("grace ended" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.connect")))


def test_reconnect_within_the_grace_is_admitted_until_it_ends(
        enroll: Enroll, start_broker: StartBroker, sqlite_authority: Authority) -> None:
    broker = start_broker(superseded_grace="2s")
    old = enroll("d1")
    rekey(sqlite_authority, old)
    within = Client(broker.port, old)
    try:
        assert within.connect() == 0  # make-before-break: the old certificate still works
        assert within.disconnected.wait(3.0)
    finally:
        within.close()


def test_zero_grace_drops_the_superseded_certificate_at_once(
        enroll: Enroll, start_broker: StartBroker, sqlite_authority: Authority) -> None:
    broker = start_broker(superseded_grace="0")
    old = enroll("d1")
    live = Client(broker.port, old)
    try:
        assert live.connect() == 0
        rekey(sqlite_authority, old)
        assert live.disconnected.wait(1.0)
    finally:
        live.close()
