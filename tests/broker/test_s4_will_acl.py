"""S4: the will topic must pass the publish policy.

Stock amqtt never checked it: a device's will on another device's command topic was
delivered and stored as retained.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine

from .conftest import Enroll
from .helpers import (
    BrokerThread,
    Client,
    Credentials,
    audit_events,
    connect_packet,
    read_connack,
    tls_socket,
    wait_until,
)

NOT_AUTHORIZED = 5


def test_s4_will_on_foreign_topic_refused(enroll: Enroll, connect: Callable[..., Client],
                                          sqlite_engine: Engine) -> None:
    connect(enroll("d1"), will=("devices/d2/commands/unlock", b"1", 1, True),
            expect=NOT_AUTHORIZED)
    assert wait_until(lambda: any("may not publish its will" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.connect")))


def test_s4_will_on_wildcard_topic_refused(enroll: Enroll, broker: BrokerThread) -> None:
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(connect_packet("d1", will=("devices/+/commands/x", b"1")))
        assert read_connack(sock) == NOT_AUTHORIZED


def test_s4_allowed_will_published_on_abnormal_disconnect(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    watcher = connect(issue_service("monitor"))
    assert watcher.subscribe("devices/+/state") == [1]
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(connect_packet("d1", will=("devices/d1/state", b"offline")))
        assert read_connack(sock) == 0
    message = watcher.receive()  # the socket closed without DISCONNECT
    assert message is not None
    assert (message.topic, message.payload) == ("devices/d1/state", b"offline")
