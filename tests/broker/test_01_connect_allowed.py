"""Admitted devices and services: allowed publish and subscribe work end to end."""

from __future__ import annotations

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


def test_device_connects_with_its_own_client_id(enroll: Enroll,
                                                connect: Callable[..., Client]) -> None:
    connect(enroll("d1"))


def test_service_receives_device_telemetry(enroll: Enroll,
                                           issue_service: Callable[[str], Credentials],
                                           connect: Callable[..., Client]) -> None:
    sink = connect(issue_service("ingest"), client_id="ingest-1")
    assert sink.subscribe("devices/+/telemetry", qos=1) == [1]
    device = connect(enroll("d1"))
    device.publish("devices/d1/telemetry", b"21.5", qos=1)
    message = sink.receive()
    assert message is not None
    assert (message.topic, message.payload, message.qos) == ("devices/d1/telemetry", b"21.5", 1)


def test_device_receives_its_commands_and_group_broadcasts(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    device = connect(enroll("d1", group="g1"))
    assert device.subscribe("devices/d1/commands/#", "groups/g1/broadcast/#") == [1, 1]
    backend = connect(issue_service("control"))
    backend.publish("devices/d1/commands/reboot", b"now", qos=1)
    backend.publish("groups/g1/broadcast/firmware", b"v2", qos=0)
    received = {(m.topic, m.payload) for m in (device.receive(), device.receive()) if m}
    assert received == {("devices/d1/commands/reboot", b"now"),
                        ("groups/g1/broadcast/firmware", b"v2")}


def test_qos_is_the_minimum_of_publish_and_subscription(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    sink = connect(issue_service("ingest"))
    assert sink.subscribe("devices/+/telemetry", qos=0) == [0]
    device = connect(enroll("d1"))
    device.publish("devices/d1/telemetry", b"x", qos=1)
    message = sink.receive()
    assert message is not None
    assert message.qos == 0


def test_repeated_subscribe_replaces_the_subscription_qos(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    # MQTT-3.8.4-3: an identical filter replaces the existing subscription, QoS included.
    sink = connect(issue_service("ingest"))
    assert sink.subscribe("devices/+/telemetry", qos=0) == [0]
    assert sink.subscribe("devices/+/telemetry", qos=1) == [1]
    device = connect(enroll("d1"))
    device.publish("devices/d1/telemetry", b"x", qos=1)
    message = sink.receive()
    assert message is not None
    assert message.qos == 1
    assert sink.receive(timeout=0.3) is None  # one subscription, one copy
    server = broker.server
    assert server is not None
    assert broker.run(lambda: len(server.broker.subscriptions["devices/+/telemetry"])) == 1


def test_persistent_session_gets_queued_qos1_messages(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    credentials = enroll("d1")
    device = connect(credentials, clean_session=False)
    device.subscribe("devices/d1/commands/#", qos=1)
    device.close()
    backend = connect(issue_service("control"))
    backend.publish("devices/d1/commands/a", b"1", qos=1)
    backend.publish("devices/d1/commands/b", b"0", qos=0)  # QoS 0 is not kept offline
    again = connect(credentials, clean_session=False)
    message = again.receive()
    assert message is not None
    assert (message.topic, message.payload) == (
        "devices/d1/commands/a", b"1")
    assert again.receive(timeout=0.3) is None


def test_unacknowledged_qos1_delivery_resent_with_dup_on_resume(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    """MQTT-4.4.0-1: a QoS 1 message not acknowledged before the connection ended is sent
    again, with DUP set, when the persistent session resumes."""
    sink = issue_service("ingest")
    with tls_socket(broker.port, sink) as sock:
        sock.sendall(connect_packet("ingest", flags=0x00))
        assert read_connack(sock) == 0
        sock.sendall(subscribe_packet("devices/+/telemetry", qos=1))
        assert sock.recv(5)[0] == 0x90
        connect(enroll("d1")).publish("devices/d1/telemetry", b"once", qos=1)
        first = sock.recv(64)
        assert first[0] == 0x32  # PUBLISH, QoS 1, not acknowledged
    with tls_socket(broker.port, sink) as sock:
        sock.sendall(connect_packet("ingest", flags=0x00))
        assert sock.recv(4) == bytes((0x20, 0x02, 0x01, 0x00))  # session present
        again = sock.recv(64)
        assert again[0] == 0x3A  # the same PUBLISH, now with DUP
        assert again[1:] == first[1:]
        sock.sendall(b"\x40\x02" + again[-len(b"once") - 2:-len(b"once")])  # PUBACK
