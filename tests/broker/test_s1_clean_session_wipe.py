"""S1: CONNECT with clean_session=1 and a victim's client id must not touch the victim.

Stock amqtt deleted the victim's subscriptions before authenticating the attacker; here the
attacker's certificate identity must equal the client id, so the CONNECT never reaches amqtt.
"""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Enroll
from .helpers import BrokerThread, Client, Credentials

IDENTIFIER_REJECTED = 2


def test_s1_clean_session_with_victim_id_cannot_wipe_subscriptions(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    victim = connect(enroll("victim"))
    assert victim.subscribe("devices/victim/commands/#") == [1]
    connect(enroll("attacker"), client_id="victim", clean_session=True,
            expect=IDENTIFIER_REJECTED)
    backend = connect(issue_service("control"))
    backend.publish("devices/victim/commands/open", b"1", qos=1)
    message = victim.receive()
    assert message is not None
    assert message.topic == "devices/victim/commands/open"
    assert not victim.disconnected.is_set()
