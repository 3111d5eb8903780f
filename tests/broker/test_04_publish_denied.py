"""PUBLISH outside the identity's topics is dropped (and audited); the client stays connected.

A device publishing outside its topics is misconfigured or compromised; like Mosquitto the
broker drops the message rather than disconnecting (MQTT 3.1.1 has no way to say why, and a
disconnect would only start a reconnect loop). A PUBLISH to an invalid topic name breaks the
protocol and closes the connection (MQTT-4.7.3-1, MQTT-3.3.2-2).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine

from .conftest import Enroll
from .helpers import (
    BrokerThread,
    Client,
    Credentials,
    audit_events,
    closed_within,
    connect_packet,
    publish_packet,
    read_connack,
    tls_socket,
    wait_until,
)


def test_publish_denied_cross_device_not_delivered(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], sqlite_engine: Engine) -> None:
    sink = connect(issue_service("ingest"))
    assert sink.subscribe("devices/+/telemetry") == [1]
    d2 = connect(enroll("d2"))
    assert d2.subscribe("devices/d2/commands/#") == [1]
    d1 = connect(enroll("d1"))
    d1.publish("devices/d2/telemetry", b"forged", qos=1)
    d1.publish("devices/d2/commands/unlock", b"forged", qos=1)
    d1.publish("devices/d1/telemetry", b"real", qos=1)
    message = sink.receive()
    assert message is not None
    assert (message.topic, message.payload) == ("devices/d1/telemetry", b"real")
    assert sink.receive(timeout=0.3) is None
    assert d2.receive(timeout=0.3) is None
    assert not d1.disconnected.is_set()
    assert wait_until(lambda: any("may not publish 'devices/d2/commands/unlock'" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.publish")))


@pytest.mark.parametrize("topic", ["$SYS/broker/uptime", "devices/d1/commands/x", "devices",
                                   "groups/g1/broadcast/x"])
def test_publish_denied_outside_device_topics(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], topic: str) -> None:
    observer = connect(issue_service("observer"))
    device = connect(enroll("d1"))
    assert device.subscribe("devices/d1/commands/#", "groups/g1/broadcast/#") == [1, 1]
    device.publish(topic, b"x", qos=1)
    assert device.receive(timeout=0.3) is None
    assert observer.receive(timeout=0.1) is None


def test_publish_denied_service_to_telemetry(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    sink = connect(issue_service("ingest"))
    sink.subscribe("devices/+/telemetry")
    connect(issue_service("control")).publish("devices/d1/telemetry", b"forged", qos=1)
    assert sink.receive(timeout=0.3) is None


@pytest.mark.parametrize("topic", ["devices/+/telemetry", "devices/d1/#", ""])
def test_publish_invalid_topic_name_closes_connection(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread, topic: str) -> None:
    sink = connect(issue_service("ingest"))
    sink.subscribe("devices/+/telemetry")
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(connect_packet("d1"))
        assert read_connack(sock) == 0
        sock.sendall(publish_packet(topic, b"x"))
        assert closed_within(sock, 2) is not None
    assert sink.receive(timeout=0.2) is None
