"""One device retaining 2,000 messages of 16 KiB under its own topics keeps at most
broker.max_retained_messages / max_retained_bytes of them (100 / 1 MiB by default)."""

from __future__ import annotations

import pytest
from broker.conftest import Enroll, StartBroker
from broker.helpers import BrokerThread
from broker.quota_helpers import publish, raw_client, read_packet, wait_for_quota_event
from sqlalchemy.engine import Engine

pytestmark = pytest.mark.slow

MESSAGES = 2000
PAYLOAD = b"r" * 16384


def retained_by_d1(broker: BrokerThread) -> tuple[int, int]:
    assert broker.server is not None
    retained = broker.server.broker.retained_messages
    return broker.run(lambda: (
        sum(1 for topic in retained if topic.startswith("devices/d1/")),
        sum(len(m.data) for topic, m in retained.items() if topic.startswith("devices/d1/"))))


def test_retained_flood_is_held_to_the_device_quota(
        enroll: Enroll, start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker()
    settings = broker.settings
    with raw_client(broker.port, enroll("d1")) as sock:
        for index in range(MESSAGES):
            sock.sendall(publish(f"devices/d1/events/{index}", PAYLOAD, retain=True))
        sock.sendall(publish("devices/d1/events/fence", b"", qos=1))
        assert read_packet(sock)[0] == 0x40  # everything before it has been routed
        count, size = retained_by_d1(broker)
        assert count <= settings.max_retained_messages
        assert size <= settings.max_retained_bytes
        assert count == settings.max_retained_bytes // (len(PAYLOAD) + len("devices/d1/events/0"))

        sock.sendall(publish("devices/d1/events/0", b"", qos=1, retain=True))  # clear one
        assert read_packet(sock)[0] == 0x40
        sock.sendall(publish("devices/d1/events/new", PAYLOAD, qos=1, retain=True))
        assert read_packet(sock)[0] == 0x40
        assert retained_by_d1(broker)[0] == count  # the freed place was taken again
    assert len(wait_for_quota_event(sqlite_engine, "max_retained_bytes")) == 1
