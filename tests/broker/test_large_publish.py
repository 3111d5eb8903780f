"""PUBLISH packets larger than one socket read (16 KiB) take the path small ones take.

ConnectionReader reads a packet whole, whatever its size up to ``broker.max_packet_bytes``,
before checking and routing it (amqtt's own PUBLISH handling is never reached: the session's
inbound queue takes nothing). So a 64 KiB message is delivered intact and acknowledged, the
topic policy and the retained quota apply to it, and a packet above the size bound closes
the connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine

from fleet.broker.packets import encode_length

from .conftest import Enroll, StartBroker
from .helpers import (
    BrokerThread,
    Client,
    Clients,
    Credentials,
    audit_events,
    received_until_closed,
    wait_until,
)
from .quota_helpers import publish, quota_events, raw_client, read_packet

LARGE = 64 * 1024
TELEMETRY = "devices/d1/telemetry"
EVENTS = "devices/d1/events"


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


@pytest.fixture
def sink(issue_service: Callable[[str], Credentials], connect: Callable[..., Client]) -> Client:
    client = connect(issue_service("ingest"))
    assert client.subscribe("devices/+/telemetry", "devices/+/events/#") == [1, 1]
    return client


@pytest.mark.parametrize("qos", [0, 1])
def test_publish_over_16_kib_is_delivered_intact(qos: int, enroll: Enroll, broker: BrokerThread,
                                                 sink: Client) -> None:
    payload = os.urandom(LARGE)
    with raw_client(broker.port, enroll("d1")) as sock:
        sock.sendall(publish(TELEMETRY, payload, qos=qos, packet_id=5))
        if qos:
            assert read_packet(sock) == puback(5)
        message = sink.receive()
    assert message is not None
    assert (message.topic, message.qos, message.payload) == (TELEMETRY, qos, payload)


@pytest.mark.parametrize("qos", [0, 1])
def test_cross_device_publish_over_16_kib_is_not_delivered(
        qos: int, enroll: Enroll, broker: BrokerThread, sink: Client,
        connect: Callable[..., Client], sqlite_engine: Engine) -> None:
    victim = connect(enroll("d2"))
    assert victim.subscribe("devices/d2/commands/#") == [1]
    forged = os.urandom(LARGE)
    with raw_client(broker.port, enroll("d1")) as sock:
        sock.sendall(publish("devices/d2/telemetry", forged, qos=qos, packet_id=1)
                     + publish("devices/d2/commands/open", forged, qos=qos, packet_id=2)
                     + publish(TELEMETRY, b"real", qos=1, packet_id=3))
        answers = [read_packet(sock) for _ in range(3 if qos else 1)]
    assert answers == ([puback(1), puback(2), puback(3)] if qos else [puback(3)])
    message = sink.receive()
    assert message is not None
    assert (message.topic, message.payload) == (TELEMETRY, b"real")
    assert sink.receive(timeout=0.3) is None
    assert victim.receive(timeout=0.1) is None
    assert wait_until(lambda: any("may not publish 'devices/d2/commands/open'" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.publish")))


def test_max_packet_bytes_bounds_a_large_publish(enroll: Enroll, start_broker: StartBroker,
                                                 issue_service: Callable[[str], Credentials],
                                                 sqlite_engine: Engine) -> None:
    """A PUBLISH of exactly broker.max_packet_bytes is delivered; one byte more closes."""
    limit = 32 * 1024
    broker = start_broker(max_packet_bytes=str(limit))
    with Clients(broker) as clients:
        sink = clients.connect(issue_service("ingest"))
        sink.subscribe("devices/+/telemetry")
        fixed = 1 + len(encode_length(limit)) + 2 + len(TELEMETRY) + 2
        at_limit = publish(TELEMETRY, os.urandom(limit - fixed), qos=1, packet_id=1)
        above = publish(TELEMETRY, os.urandom(limit - fixed + 1), qos=1, packet_id=2)
        assert (len(at_limit), len(above)) == (limit, limit + 1)
        with raw_client(broker.port, enroll("d1")) as sock:
            sock.sendall(at_limit)
            assert read_packet(sock) == puback(1)
            sock.sendall(above)
            assert received_until_closed(sock, 5) == b""  # no PUBACK
        message = sink.receive()
        assert message is not None
        assert len(message.payload) == limit - fixed
        assert sink.receive(timeout=0.3) is None
    assert wait_until(lambda: any(f"packet of {limit + 1} bytes" in reason
                                  for reason in quota_events(sqlite_engine, "max_packet_bytes")))


def test_retained_quota_counts_large_messages(enroll: Enroll, start_broker: StartBroker,
                                              issue_service: Callable[[str], Credentials],
                                              sqlite_engine: Engine) -> None:
    """With 64 KiB of retained bytes per device, a second 40 KiB message is routed but not
    kept."""
    broker = start_broker(max_retained_bytes=str(LARGE), max_packet_bytes=str(LARGE))
    with Clients(broker) as clients:
        sink = clients.connect(issue_service("ingest"))
        assert sink.subscribe("devices/+/events/#") == [1]
        payloads = [os.urandom(40 * 1024), os.urandom(40 * 1024)]
        with raw_client(broker.port, enroll("d1")) as sock:
            sock.sendall(publish(f"{EVENTS}/a", payloads[0], qos=1, packet_id=1, retain=True)
                         + publish(f"{EVENTS}/b", payloads[1], qos=1, packet_id=2, retain=True))
            assert [read_packet(sock), read_packet(sock)] == [puback(1), puback(2)]
        live = [sink.receive(), sink.receive()]
        assert [m.payload for m in live if m is not None] == payloads
        assert broker.server is not None
        server = broker.server
        assert broker.run(lambda: set(server.broker.retained_messages)) == {f"{EVENTS}/a"}
        late = clients.connect(issue_service("archive"))
        assert late.subscribe("devices/+/events/#") == [1]
        retained = late.receive()
        assert retained is not None
        assert (retained.topic, retained.payload, retained.retain) == (
            f"{EVENTS}/a", payloads[0], True)
        assert late.receive(timeout=0.3) is None
    assert wait_until(lambda: bool(quota_events(sqlite_engine, "max_retained_bytes")))
