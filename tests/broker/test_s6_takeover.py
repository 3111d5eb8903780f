"""S6: a live session cannot be taken over by another certificate; its own identity can.

Stock amqtt let a second certificate presenting the same client id take over a live session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .conftest import Enroll
from .helpers import (
    BrokerThread,
    Client,
    Credentials,
    connect_packet,
    read_connack,
    subscribe_packet,
    tls_socket,
)

IDENTIFIER_REJECTED = 2


def test_s6_live_session_not_taken_over_by_other_certificate(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    victim = connect(enroll("victim"))
    victim.subscribe("devices/victim/commands/#")
    connect(enroll("attacker"), client_id="victim", clean_session=False,
            expect=IDENTIFIER_REJECTED)
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


def test_takeover_sends_connack_before_any_message(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    # MQTT-3.2.0-1: the first packet to a client is the CONNACK, also when messages are being
    # routed to the session it takes over.
    credentials = enroll("d1")
    holder = tls_socket(broker.port, credentials)
    holder.sendall(connect_packet("d1", flags=0x00))  # persistent session
    assert read_connack(holder) == 0
    holder.sendall(subscribe_packet("devices/d1/commands/#", qos=1))
    assert holder.recv(5)[:1] == b"\x90"  # SUBACK
    control = connect(issue_service("control"))
    flooding = threading.Event()
    flooding.set()

    def flood() -> None:
        while flooding.is_set():
            control.publish("devices/d1/commands/x", b"1", qos=0)
            time.sleep(0.0005)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    sockets = [holder]
    try:
        for _ in range(15):
            time.sleep(0.02)
            taker = tls_socket(broker.port, credentials)
            sockets.append(taker)
            taker.sendall(connect_packet("d1", flags=0x00))
            first = taker.recv(4)
            assert first[:1] == b"\x20", f"first packet after a takeover: {first!r}"
    finally:
        flooding.clear()
        flooder.join()
        for sock in sockets:
            sock.close()
