"""S6: a live session cannot be taken over by another certificate; its own identity can.

Stock amqtt let a second certificate presenting the same client id take over a live session.
"""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Enroll
from .helpers import BrokerThread, Client, Credentials

IDENTIFIER_REJECTED = 2


def test_s6_live_session_not_taken_over_by_other_certificate(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    victim = connect(enroll("victim"))
    victim.subscribe("devices/victim/commands/#")
    connect(enroll("attacker"), client_id="victim", clean_session=False,
            expect=IDENTIFIER_REJECTED)
    connect(issue_service("victim"), expect=IDENTIFIER_REJECTED)  # a service of that name
    assert not victim.disconnected.is_set()
    connect(issue_service("control")).publish("devices/victim/commands/x", b"1", qos=1)
    assert victim.receive() is not None


def test_s6_same_identity_takes_over_its_own_session(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    first = connect(credentials, clean_session=False)
    first.subscribe("devices/d1/commands/#")
    second = connect(credentials, clean_session=False)  # MQTT-3.1.4-2
    assert first.disconnected.wait(2)
    connect(issue_service("control")).publish("devices/d1/commands/x", b"1", qos=1)
    message = second.receive()
    assert message is not None
    assert message.topic == "devices/d1/commands/x"
    assert broker.connection_count() == 2
