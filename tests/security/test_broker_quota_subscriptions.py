"""One device asking for 20,000 subscriptions is granted broker.max_subscriptions (100 by
default); the rest get SUBACK 0x80 and the whole episode is audited once."""

from __future__ import annotations

import pytest
from broker.conftest import Enroll, StartBroker
from broker.quota_helpers import raw_client, suback_codes, subscribe, wait_for_quota_event
from sqlalchemy.engine import Engine

from fleet.broker.engine import FILTERS_KEY

pytestmark = pytest.mark.slow

FILTERS = 20_000
PER_PACKET = 100


def test_subscription_flood_is_held_to_the_session_quota(
        enroll: Enroll, start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker()
    quota = broker.settings.max_subscriptions
    codes: list[int] = []
    with raw_client(broker.port, enroll("d1")) as sock:
        for first in range(0, FILTERS, PER_PACKET):
            sock.sendall(subscribe(*(f"devices/d1/commands/{n}"
                                     for n in range(first, first + PER_PACKET)),
                                   packet_id=first // PER_PACKET + 1))
            codes += suback_codes(sock)
        assert broker.server is not None
        engine = broker.server.broker
        held = broker.run(lambda: len(engine.sessions["d1"][0].attributes[FILTERS_KEY]))
        table = broker.run(lambda: len(engine.subscriptions))
    assert codes == [1] * quota + [0x80] * (FILTERS - quota)
    assert held == quota
    assert table == quota
    assert len(wait_for_quota_event(sqlite_engine, "max_subscriptions")) == 1
