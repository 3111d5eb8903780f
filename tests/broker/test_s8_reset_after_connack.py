"""S8: a connection that ends between its CONNACK and the start of its reader is torn down.

Stock amqtt 0.12.1 creates a connection's disconnect waiter only after it has started the
connection's reader; a reset that reaches the broker in between ends the reader before the
waiter exists, nothing resolves it, and the connection's task waits for ever, holding its
client id. Every later CONNECT of that client id then waited ``broker.connect_timeout`` (5 s)
for it; a persistent CONNECT resumed the clean session it left behind (CONNACK session present
1, and that session discarded again when the new connection ended: commands queued for the
device lost), and a takeover left the resumed session marked disconnected, so messages for the
live client were queued and never sent.

Between a CONNACK and the reader's first read the broker's event loop runs a few iterations;
:func:`hold_after_connack` widens that window to 100 ms, so the reset lands in it every time.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest

from fleet.broker.amqtt_adapter import Handler

from .conftest import Enroll, StartBroker
from .helpers import BrokerThread, Client, Clients, Credentials, wait_until

TOPIC = "devices/d1/commands/open"
FILTER = "devices/d1/commands/#"
WILL_TOPIC = "devices/d1/state"
RUNS = 5


@contextmanager
def hold_after_connack(broker: BrokerThread, seconds: float = 0.1) -> Iterator[None]:
    """The broker's event loop goes on with other work for *seconds* after each CONNACK it
    writes, before it starts that connection's reader (``Handler.start``)."""
    assert broker.server is not None
    start = Handler.start

    async def held(handler: Handler) -> None:
        await asyncio.sleep(seconds)
        await start(handler)

    Handler.start = held  # type: ignore[method-assign]
    try:
        yield
    finally:
        Handler.start = start  # type: ignore[method-assign]


def reset_on_connack(paho: mqtt.Client, *_: object) -> None:
    """The client leaves as soon as its CONNACK arrives, and its socket closes with a reset
    (SO_LINGER 0: TCP RST), as a device's does when its link fails with data in flight."""
    sock = paho.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    paho.disconnect()


def end_clean_session(port: int, credentials: Credentials, ending: str) -> None:
    """Connect with clean_session=1, then end the connection: DISCONNECT, or a reset."""
    client = Client(port, credentials, clean_session=True)
    if ending == "reset":
        client.paho.on_connect = reset_on_connack
        client.paho.connect("127.0.0.1", port)
        client.paho.loop_start()
        assert client.disconnected.wait(5)
        client.paho.loop_stop()
    else:
        assert client.connect() == 0
        client.close()


def test_s8_connection_reset_after_connack_is_torn_down(
        enroll: Enroll, broker: BrokerThread) -> None:
    credentials = enroll("d1")
    with hold_after_connack(broker):
        for _ in range(RUNS):
            end_clean_session(broker.port, credentials, "reset")
            assert wait_until(lambda: broker.connection_count() == 0)
            assert wait_until(lambda: "d1" not in broker.session_ids())


@pytest.mark.parametrize("ending", ["disconnect", "reset"])
def test_persistent_session_right_after_a_clean_one(
        enroll: Enroll, issue_service: Callable[[str], Credentials], broker: BrokerThread,
        ending: str) -> None:
    # connect clean, end it, at once connect clean_session=0 and subscribe, go away; a
    # service sends a QoS 1 command; the device resumes and must get it
    credentials = enroll("d1")
    limit = broker.settings.connect_timeout.total_seconds()
    with Clients(broker) as clients, hold_after_connack(broker):
        control = clients.connect(issue_service("control"))
        for run in range(RUNS):
            end_clean_session(broker.port, credentials, ending)
            started = time.monotonic()
            device = clients.connect(credentials, clean_session=False)
            assert time.monotonic() - started < limit, "CONNACK waited for the last connection"
            assert device.session_present is False  # the clean session ended with its connection
            assert device.subscribe(FILTER, qos=1) == [1]
            device.close()
            assert wait_until(lambda: broker.connection_count() == 1)  # the service alone
            command = f"command {run}".encode()
            control.publish(TOPIC, command, qos=1)
            resumed = clients.connect(credentials, clean_session=False)
            assert resumed.session_present is True
            message = resumed.receive()
            assert message is not None, f"run {run}: the queued command was lost"
            assert message.payload == command
            resumed.close()


# When a connection's teardown outlasts broker.connect_timeout, the gate stops waiting for it
# and admits the next connection of its client id while it is still ending. hold_after_connack
# keeps the first one from ending for a second; the gate waits 300 ms.

def test_clean_session_of_a_connection_still_ending_is_not_resumed(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    broker = start_broker(connect_timeout="300ms")
    credentials = enroll("d1")
    with Clients(broker) as clients:
        control = clients.connect(issue_service("control"))
        with hold_after_connack(broker, 1.0):
            clients.connect(credentials, clean_session=True)
            device = clients.connect(credentials, clean_session=False)
            assert device.session_present is False  # MQTT-3.1.2-6: it ended with its connection
            assert device.subscribe(FILTER, qos=1) == [1]
        device.close()
        assert wait_until(lambda: broker.connection_count() == 1)
        control.publish(TOPIC, b"queued", qos=1)
        resumed = clients.connect(credentials, clean_session=False)
        assert resumed.session_present is True
        message = resumed.receive()
        assert message is not None
        assert message.payload == b"queued"


def test_session_taken_over_from_a_connection_still_ending_stays_the_new_ones(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    broker = start_broker(connect_timeout="300ms")
    credentials = enroll("d1")
    with Clients(broker) as clients:
        control = clients.connect(issue_service("control"))
        assert control.subscribe(WILL_TOPIC, qos=1) == [1]
        first = clients.connect(credentials, clean_session=False)
        assert first.subscribe(FILTER, qos=1) == [1]
        first.close()
        with hold_after_connack(broker, 1.0):
            clients.connect(credentials, clean_session=False)
            device = clients.connect(credentials, clean_session=False,
                                     will=(WILL_TOPIC, b"gone", 1, False))
            assert device.session_present is True
            assert wait_until(lambda: broker.connection_count() == 2)  # the first one ended
        control.publish(TOPIC, b"live", qos=1)
        message = device.receive()
        assert message is not None, "the session was left marked disconnected"
        assert message.payload == b"live"
        assert control.receive(timeout=0.5) is None  # the will is the new connection's
