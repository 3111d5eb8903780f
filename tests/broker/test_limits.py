"""Resource limits: stalled handshakes, connection cap, packet size, slow consumers."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine

from fleet.broker.connection import Connection

from .conftest import Enroll, StartBroker
from .helpers import (
    BrokerThread,
    Client,
    Credentials,
    audit_events,
    client_hello,
    closed_within,
    connect_packet,
    read_connack,
    subscribe_packet,
    wait_until,
)

PAYLOAD = b"x" * 2048


@contextmanager
def open_sockets(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        for sock in sockets:
            if first_bytes:
                sock.sendall(first_bytes)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_stalled_handshakes_do_not_lock_devices_out(enroll: Enroll,
                                                    start_broker: StartBroker) -> None:
    broker = start_broker(max_pending_connections="2", connect_timeout="2s")
    device = enroll("d1")
    hello = client_hello()
    with open_sockets(broker.port, 30), \
            open_sockets(broker.port, 10, hello[:20]), \
            open_sockets(broker.port, 2, hello):
        time.sleep(0.2)  # every staller is accepted and waiting before the device comes
        client = Client(broker.port, device)
        try:
            assert client.connect() == 0
        finally:
            client.close()


def test_connection_limit_refuses_extra_sockets(enroll: Enroll, start_broker: StartBroker,
                                                sqlite_engine: Engine) -> None:
    """With max_connections admitted connections open, a further socket is closed at once."""
    broker = start_broker(max_connections="2")
    admitted = [Client(broker.port, enroll(f"d{i}")) for i in range(2)]
    try:
        for client in admitted:
            assert client.connect() == 0
        late = enroll("d9")
        refused = Client(broker.port, late)
        assert refused.connect() is None
        refused.close()
    finally:
        for client in admitted:
            client.close()
    assert wait_until(lambda: any("connection limit of 2" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.handshake")))
    assert wait_until(lambda: broker.connection_count() == 0)
    again = Client(broker.port, late)
    try:
        assert again.connect() == 0
    finally:
        again.close()


def test_connection_limit_makes_room_by_closing_pending_sockets(
        enroll: Enroll, start_broker: StartBroker) -> None:
    """Sockets that never finished a handshake give way to a device at the connection cap."""
    broker = start_broker(max_connections="3")
    device = enroll("d1")
    with open_sockets(broker.port, 3) as idle:
        time.sleep(0.2)
        client = Client(broker.port, device)
        try:
            assert client.connect() == 0
        finally:
            client.close()
        assert closed_within(idle[0], 1.0) is not None  # the oldest one was cut


def test_packet_over_size_limit_closes_connection(enroll: Enroll,
                                                  start_broker: StartBroker) -> None:
    broker = start_broker(max_packet_bytes="1024")
    client = Client(broker.port, enroll("d1"))
    try:
        assert client.connect() == 0
        client.publish("devices/d1/telemetry", b"x" * 512, qos=1)
        client.paho.publish("devices/d1/telemetry", b"x" * 4096, qos=1)
        assert client.disconnected.wait(2)
    finally:
        client.close()


def test_slow_consumer_queue_is_bounded(enroll: Enroll,
                                        issue_service: Callable[[str], Credentials],
                                        start_broker: StartBroker) -> None:
    """A subscriber that stops reading gets at most max_queued_messages backed-up packets;
    the rest is dropped and the publisher is not slowed down."""
    broker = start_broker(max_queued_messages="10")
    sink = issue_service("ingest")
    context = ssl.create_default_context(cafile=str(sink.ca))
    context.load_cert_chain(str(sink.cert), str(sink.key))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", broker.port))
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as stalled:
        stalled.sendall(connect_packet("ingest"))
        assert read_connack(stalled) == 0
        stalled.sendall(subscribe_packet("devices/+/telemetry"))
        assert stalled.recv(5)[0] == 0x90  # SUBACK; from now on it never reads again
        publisher = Client(broker.port, enroll("d1"))
        try:
            assert publisher.connect() == 0
            for _ in range(3000):  # more than the kernel's socket buffers hold
                publisher.paho.publish("devices/d1/telemetry", PAYLOAD, qos=0)
            publisher.publish("devices/d1/telemetry", b"last", qos=1)
        finally:
            publisher.close()
        assert broker.server is not None
        server = broker.server

        def stalled_connection() -> Connection:
            return next(c for c in server.connections if c.client_id == "ingest")

        assert broker.wait_for(lambda: stalled_connection().dropped > 0)
        backlog = broker.run(lambda: stalled_connection().transport.get_write_buffer_size())
        assert backlog <= 12 * (len(PAYLOAD) + 128)  # 10 packets plus one TLS write
        assert closed_within(stalled, 0.1) is None  # dropped messages, not the connection


def test_broker_closes_cleanly_with_clients_connected(enroll: Enroll,
                                                      connect: Callable[..., Client],
                                                      broker: BrokerThread) -> None:
    client = connect(enroll("d1"))
    assert broker.server is not None
    broker.call(broker.server.close(), timeout=30)
    assert client.disconnected.wait(2)
