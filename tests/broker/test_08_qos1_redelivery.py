"""QoS 1 deliveries in flight when a connection ends are sent again on resume (MQTT-4.4.0-1).

Unacknowledging subscribers are raw TLS sockets that read a PUBLISH and are dropped without
a PUBACK; the connection that finally acknowledges is a paho client.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fleet.authority import Authority

from .conftest import Enroll, StartBroker
from .helpers import (
    WAIT,
    BrokerThread,
    Client,
    Credentials,
    connect_packet,
    subscribe_packet,
    tls_socket,
    wait_until,
)

TOPIC = "devices/d1/commands/open"
FILTER = "devices/d1/commands/#"
CLEAN_SESSION_0 = 0x00


def read_packet(sock: ssl.SSLSocket) -> bytes:
    """One whole MQTT packet (remaining length below 128 bytes)."""
    data = b""
    while len(data) < 2 or len(data) < 2 + data[1]:
        chunk = sock.recv(2 + data[1] - len(data) if len(data) >= 2 else 2 - len(data))
        assert chunk, "connection closed"
        data += chunk
    assert data[1] < 0x80
    return data


def read_publish(sock: ssl.SSLSocket) -> tuple[int, str, int, bytes]:
    """The next PUBLISH: (first byte, topic, packet identifier, payload)."""
    packet = read_packet(sock)
    assert packet[0] >> 4 == 3, packet
    end = 4 + int.from_bytes(packet[2:4], "big")
    packet_id = int.from_bytes(packet[end:end + 2], "big")
    return packet[0], packet[4:end].decode(), packet_id, packet[end + 2:]


def offline(broker: BrokerThread, client_id: str) -> bool:
    sessions = broker.server.broker.sessions  # type: ignore[union-attr]
    return broker.wait_for(lambda: not sessions[client_id][0].transitions.is_connected())


def inflight(broker: BrokerThread, client_id: str) -> list[int]:
    sessions = broker.server.broker.sessions  # type: ignore[union-attr]
    return broker.run(lambda: list(sessions[client_id][0].inflight_out))


@contextmanager
def persistent(broker: BrokerThread, credentials: Credentials, *,
               subscribe: bool = False, qos: int = 1) -> Iterator[ssl.SSLSocket]:
    """A raw clean_session=0 connection that acknowledges nothing itself; dropped on exit."""
    with tls_socket(broker.port, credentials) as sock:
        sock.sendall(connect_packet(credentials.name, flags=CLEAN_SESSION_0))
        assert read_packet(sock)[:2] == b"\x20\x02"
        if subscribe:
            sock.sendall(subscribe_packet(FILTER, qos=qos))
            assert read_packet(sock)[0] == 0x90
        yield sock
    assert offline(broker, credentials.name)


def test_unacknowledged_qos1_resent_with_dup_on_resume(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True) as sock:
        control.publish(TOPIC, b"1", qos=1)
        first, topic, packet_id, payload = read_publish(sock)
        assert (first, topic, payload) == (0x32, TOPIC, b"1")  # QoS 1, DUP 0
    assert inflight(broker, "d1") == [packet_id]
    device = connect(credentials, clean_session=False)
    message = device.receive()
    assert message is not None
    assert (message.topic, message.payload, message.qos) == (TOPIC, b"1", 1)
    assert message.dup
    assert message.mid == packet_id
    assert device.receive(timeout=0.5) is None  # sent once, and acknowledged by paho
    assert wait_until(lambda: not inflight(broker, "d1"))


def test_unacknowledged_qos1_resent_again_after_a_second_drop(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True) as sock:
        control.publish(TOPIC, b"1", qos=1)
        packet_id = read_publish(sock)[2]
    with persistent(broker, credentials) as sock:
        assert read_publish(sock) == (0x3A, TOPIC, packet_id, b"1")  # QoS 1, DUP 1
        control.publish(TOPIC, b"2", qos=1)  # new messages come after the resent ones
        first, _, second_id, payload = read_publish(sock)
        assert (first, payload) == (0x32, b"2")
    assert inflight(broker, "d1") == [packet_id, second_id]
    device = connect(credentials, clean_session=False)
    received = [device.receive(), device.receive()]
    assert [(m.payload, m.dup, m.mid) for m in received if m is not None] == [
        (b"1", True, packet_id), (b"2", True, second_id)]
    assert wait_until(lambda: not inflight(broker, "d1"))


def test_offline_queued_qos1_kept_until_acknowledged(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True):
        pass
    control.publish(TOPIC, b"queued", qos=1)
    with persistent(broker, credentials) as sock:
        first, _, packet_id, payload = read_publish(sock)
        assert (first, payload) == (0x32, b"queued")  # not retained, QoS 1, DUP 0
    device = connect(credentials, clean_session=False)
    message = device.receive()
    assert message is not None
    assert (message.payload, message.dup, message.mid) == (b"queued", True, packet_id)


def test_unacknowledged_qos1_discarded_by_clean_session(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True) as sock:
        control.publish(TOPIC, b"1", qos=1)
        read_publish(sock)
    fresh = connect(credentials, clean_session=True)
    assert fresh.subscribe(FILTER) == [1]
    assert fresh.receive(timeout=1.0) is None
    fresh.close()
    assert fresh.disconnected.wait(2)
    resumed = connect(credentials, clean_session=False)
    assert resumed.receive(timeout=1.0) is None


def test_inflight_and_offline_queue_bounded_by_max_queued_messages(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    broker = start_broker(max_queued_messages="2")
    credentials = enroll("d1")
    control = Client(broker.port, issue_service("control"))
    device = Client(broker.port, credentials, clean_session=False)
    try:
        assert control.connect() == 0
        with persistent(broker, credentials, subscribe=True) as sock:
            control.publish(TOPIC, b"1", qos=1)
            packet_id = read_publish(sock)[2]
        for payload in (b"2", b"3", b"4"):
            control.publish(TOPIC, payload, qos=1)
        assert device.connect() == 0
        received = [device.receive(), device.receive()]
        assert [(m.payload, m.dup) for m in received if m is not None] == [
            (b"1", True), (b"2", False)]
        assert received[0] is not None
        assert received[0].mid == packet_id
        assert device.receive(timeout=0.5) is None
    finally:
        device.close()
        control.close()


def test_inflight_qos1_purged_with_revoked_session(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread,
        sqlite_authority: Authority) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True) as sock:
        control.publish(TOPIC, b"1", qos=1)
        read_publish(sock)
    assert inflight(broker, "d1")
    sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    assert broker.wait_for(lambda: "d1" not in broker.server.broker.sessions,  # type: ignore[union-attr]
                           timeout=WAIT)
