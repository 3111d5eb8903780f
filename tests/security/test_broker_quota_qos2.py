"""One device sending 2,000 QoS 2 PUBLISH packets of 16 KiB and never releasing them pins at
most its queue budget (broker.max_queued_messages / max_queued_bytes), and only until
broker.qos2_release_timeout, also across reconnects of its persistent session."""

from __future__ import annotations

import time

import pytest
from amqtt.session import Session
from broker.conftest import Enroll, StartBroker
from broker.helpers import BrokerThread
from broker.quota_helpers import publish, raw_client, read_packet, wait_for_quota_event
from sqlalchemy.engine import Engine

pytestmark = pytest.mark.slow

MESSAGES = 2000
PAYLOAD = b"q" * 16384
TIMEOUT = 2.0


def held(broker: BrokerThread) -> int:
    """Inbound QoS 2 messages d1's session holds (stock amqtt keeps them in inflight_in)."""
    assert broker.server is not None
    session: Session = broker.server.broker.sessions["d1"][0]
    return len(session.inflight_in) + len(getattr(session, "unreleased", ()))


def test_unreleased_qos2_flood_is_bounded_and_expires(
        enroll: Enroll, start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker(qos2_release_timeout=f"{TIMEOUT}s")
    settings = broker.settings
    credentials = enroll("d1")
    with raw_client(broker.port, credentials, clean_session=False) as sock:
        started = time.monotonic()
        for packet_id in range(1, MESSAGES + 1):
            sock.sendall(publish("devices/d1/telemetry", PAYLOAD, qos=2, packet_id=packet_id))
        for _ in range(MESSAGES):
            assert read_packet(sock)[0] == 0x50  # every one gets its PUBREC
        messages = broker.run(lambda: held(broker))
        assert time.monotonic() - started < TIMEOUT  # none has expired yet
        assert 0 < messages <= settings.max_queued_messages
        assert messages * len(PAYLOAD) <= settings.max_queued_bytes
    with raw_client(broker.port, credentials, clean_session=False):
        assert broker.wait_for(lambda: held(broker) == 0, timeout=TIMEOUT + 3)
    assert len(wait_for_quota_event(sqlite_engine, "max_queued_bytes")) == 1
