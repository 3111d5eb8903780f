"""S2: a stored session can only be resumed by the identity it belongs to.

Stock amqtt reused a stored session without looking at the new connection's certificate, so
a second certificate resumed (and drained) another device's offline session.
"""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Enroll
from .helpers import BrokerThread, Client, Credentials

IDENTIFIER_REJECTED = 2


def test_s2_offline_session_not_resumed_with_another_certificate(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    victim_credentials = enroll("victim")
    victim = connect(victim_credentials, clean_session=False)
    victim.subscribe("devices/victim/commands/#", qos=1)
    victim.close()
    backend = connect(issue_service("control"))
    backend.publish("devices/victim/commands/secret", b"s3cr3t", qos=1)

    attacker = connect(enroll("attacker"), client_id="victim", clean_session=False,
                       expect=IDENTIFIER_REJECTED)
    assert attacker.receive(timeout=0.3) is None

    victim = connect(victim_credentials, clean_session=False)
    message = victim.receive()
    assert message is not None
    assert message.payload == b"s3cr3t"


def test_s2_session_bound_to_live_connection_certificate(
        enroll: Enroll, connect: Callable[..., Client], broker: BrokerThread) -> None:
    """The amqtt session carries the TLS object of the connection that resumed it."""
    credentials = enroll("d1")
    connect(credentials, clean_session=False).close()
    connect(credentials, clean_session=False)
    assert broker.server is not None
    sessions = broker.server.broker.sessions

    def bound_serial() -> str:
        from fleet.broker.connection import connection_of

        session = sessions["d1"][0]
        connection = connection_of(session)
        assert connection is not None
        assert not connection.closing
        return connection.serial

    assert broker.run(bound_serial) == credentials.serial
