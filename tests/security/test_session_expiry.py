"""A stored session expires after ``broker.session_expiry`` of its client being away (like
Mosquitto's persistent_client_expiration), so no client id squat lasts for ever: with a 1 s
setting, the session, its subscriptions and its queued messages are gone; a client that
reconnects in time keeps them."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from broker.conftest import Enroll, StartBroker
from broker.helpers import Clients, Credentials, wait_until

pytestmark = pytest.mark.slow

COMMAND = "devices/d1/commands/reboot"


def test_expired_session_drops_its_queued_messages(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    broker = start_broker(session_expiry="1s")
    credentials = enroll("d1")
    with Clients(broker) as clients:
        control = clients.connect(issue_service("control"))
        device = clients.connect(credentials, clean_session=False)
        device.subscribe("devices/d1/commands/#")
        device.close()
        assert wait_until(lambda: broker.connection_count() == 1)  # control's only
        for index in range(5):
            control.publish(COMMAND, b"%d" % index, qos=1)
        left = time.monotonic()
        assert wait_until(lambda: "d1" not in broker.session_ids(), timeout=3)
        assert time.monotonic() - left < 2
        again = clients.connect(credentials, clean_session=False)
        assert again.session_present is False
        assert again.receive(timeout=0.5) is None
        control.publish(COMMAND, b"after", qos=1)  # its subscription went with the session
        assert again.receive(timeout=0.5) is None


def test_session_reconnecting_in_time_is_kept_then_expires_when_away(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    broker = start_broker(session_expiry="1s")
    credentials = enroll("d1")
    with Clients(broker) as clients:
        control = clients.connect(issue_service("control"))
        device = clients.connect(credentials, clean_session=False)
        device.subscribe("devices/d1/commands/#")
        for round_ in range(3):  # away 0.6 s each time: 1.8 s in all, never 1 s at once
            device.close()
            assert wait_until(lambda: broker.connection_count() == 1)
            control.publish(COMMAND, b"%d" % round_, qos=1)
            time.sleep(0.6)
            device = clients.connect(credentials, clean_session=False)
            assert device.session_present is True
            message = device.receive()
            assert message is not None
            assert message.payload == b"%d" % round_
        device.close()
        assert wait_until(lambda: "d1" not in broker.session_ids(), timeout=3)
