"""Each per-device quota, at small limits: its refusal path and one audit event per episode."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine

from .conftest import Enroll, StartBroker
from .helpers import (
    BrokerThread,
    Client,
    Credentials,
    closed_within,
    connect_packet,
    tls_socket,
    wait_until,
)
from .quota_helpers import (
    publish,
    pubrel,
    quota_events,
    raw_client,
    read_packet,
    suback_codes,
    subscribe,
    wait_for_quota_event,
)

EVENTS = "devices/d1/events"
COMMANDS = "devices/d1/commands/open"


def retained_topics(broker: BrokerThread) -> set[str]:
    assert broker.server is not None
    server = broker.server
    return broker.run(lambda: set(server.broker.retained_messages))


def unreleased(broker: BrokerThread, client_id: str) -> int:
    assert broker.server is not None
    sessions = broker.server.broker.sessions
    return broker.run(lambda: len(sessions[client_id][0].unreleased))


def test_retained_messages_beyond_the_device_quota_are_routed_not_retained(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker(max_retained_messages="2")
    sink = Client(broker.port, issue_service("ingest"))
    device = Client(broker.port, enroll("d1"))
    try:
        assert sink.connect() == 0
        assert device.connect() == 0
        assert sink.subscribe("devices/+/events/#") == [1]
        for name in ("a", "b", "c", "d"):
            device.publish(f"{EVENTS}/{name}", name.encode(), qos=1, retain=True)
        live = [sink.receive() for _ in range(4)]
        assert [m.payload for m in live if m is not None] == [b"a", b"b", b"c", b"d"]
        assert retained_topics(broker) == {f"{EVENTS}/a", f"{EVENTS}/b"}
        assert len(wait_for_quota_event(sqlite_engine, "max_retained_messages")) == 1

        device.publish(f"{EVENTS}/b", b"b2", qos=1, retain=True)  # replacing is within quota
        device.publish(f"{EVENTS}/a", b"", qos=1, retain=True)  # clearing frees one
        device.publish(f"{EVENTS}/c", b"c2", qos=1, retain=True)
        assert retained_topics(broker) == {f"{EVENTS}/b", f"{EVENTS}/c"}
    finally:
        device.close()
        sink.close()


def test_retained_bytes_quota_counts_topic_and_payload(
        enroll: Enroll, start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker(max_retained_bytes="300000")  # at least max_packet_bytes
    device = Client(broker.port, enroll("d1"))
    try:
        assert device.connect() == 0
        for index in range(3):
            device.publish(f"{EVENTS}/{index}", b"x" * 120_000, qos=1, retain=True)
        assert retained_topics(broker) == {f"{EVENTS}/0", f"{EVENTS}/1"}
        assert len(wait_for_quota_event(sqlite_engine, "max_retained_bytes")) == 1
    finally:
        device.close()


def test_a_retained_will_obeys_the_retained_quota(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    broker = start_broker(max_retained_messages="1")
    credentials = enroll("d1")
    sink = Client(broker.port, issue_service("ingest"))
    try:
        assert sink.connect() == 0
        assert sink.subscribe("devices/+/events/#") == [1]
        with raw_client(broker.port, credentials) as sock:
            sock.sendall(publish(f"{EVENTS}/a", b"a", qos=1, retain=True))
            assert read_packet(sock)[0] == 0x40
        with tls_socket(broker.port, credentials) as sock:
            sock.sendall(connect_packet("d1", will=(f"{EVENTS}/will", b"gone")))
            assert read_packet(sock)[3] == 0
        # Closed without DISCONNECT: the will (retain set) is published, but not kept.
        payloads = [sink.receive(), sink.receive()]
        assert [m.payload for m in payloads if m is not None] == [b"a", b"gone"]
        assert retained_topics(broker) == {f"{EVENTS}/a"}
    finally:
        sink.close()


def test_subscriptions_beyond_the_session_quota_get_suback_failure(
        enroll: Enroll, connect: Callable[..., Client], sqlite_engine: Engine,
        start_broker: StartBroker) -> None:
    broker = start_broker(max_subscriptions="2")
    with raw_client(broker.port, enroll("d1")) as sock:
        sock.sendall(subscribe("devices/d1/commands/a", "devices/d1/commands/b",
                               "devices/d1/commands/c"))
        assert suback_codes(sock) == [1, 1, 0x80]
        sock.sendall(subscribe("devices/d1/commands/a", qos=0, packet_id=2))  # a replacement
        assert suback_codes(sock) == [0]
        sock.sendall(subscribe("devices/d1/commands/d", packet_id=3))
        assert suback_codes(sock) == [0x80]
    assert len(wait_for_quota_event(sqlite_engine, "max_subscriptions")) == 1


def test_a_filter_too_long_or_too_deep_gets_suback_failure(
        enroll: Enroll, broker: BrokerThread) -> None:
    deep = "devices/d1/commands/" + "/".join(["x"] * 40)
    long = "devices/d1/commands/" + "x" * 2000
    with raw_client(broker.port, enroll("d1")) as sock:
        sock.sendall(subscribe(deep, long, "devices/d1/commands/#"))
        assert suback_codes(sock) == [0x80, 0x80, 1]


def test_packets_above_max_packet_bytes_close_the_connection(
        enroll: Enroll, start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker(max_packet_bytes="1024", max_queued_bytes="1024",
                          max_retained_bytes="1024")
    credentials = enroll("d1")
    topic = f"{EVENTS}/x"
    at_limit = publish(topic, b"x" * (2024 - len(publish(topic, b"x" * 1000, qos=1))), qos=1)
    assert len(at_limit) == 1024
    oversized = [publish(topic, b"x" * 1024, qos=qos) for qos in (0, 1, 2)]
    oversized.append(subscribe("devices/d1/commands/" + "x" * 1024))
    for packet in oversized:
        with raw_client(broker.port, credentials) as sock:
            sock.sendall(at_limit)
            assert read_packet(sock)[0] == 0x40  # PUBACK: exactly the limit is accepted
            sock.sendall(packet)
            assert closed_within(sock, 2) is not None
    assert wait_until(lambda: len(quota_events(sqlite_engine, "max_packet_bytes")) == 4)


def test_an_unreleased_qos2_message_is_discarded_after_the_timeout_across_reconnects(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    broker = start_broker(qos2_release_timeout="1s")
    credentials = enroll("d1")
    sink = Client(broker.port, issue_service("ingest"))
    try:
        assert sink.connect() == 0
        assert sink.subscribe("devices/+/telemetry", qos=2) == [2]
        with raw_client(broker.port, credentials, clean_session=False) as sock:
            sock.sendall(publish("devices/d1/telemetry", b"late", qos=2, packet_id=7))
            assert read_packet(sock) == b"\x50\x02\x00\x07"  # PUBREC
            sock.sendall(publish("devices/d1/telemetry", b"ok", qos=2, packet_id=8))
            assert read_packet(sock) == b"\x50\x02\x00\x08"
            sock.sendall(pubrel(8))
            assert read_packet(sock) == b"\x70\x02\x00\x08"  # PUBCOMP
        assert unreleased(broker, "d1") == 1
        with raw_client(broker.port, credentials, clean_session=False) as sock:
            assert wait_until(lambda: unreleased(broker, "d1") == 0, timeout=2)
            sock.sendall(pubrel(7))  # too late: completed, not delivered
            assert read_packet(sock) == b"\x70\x02\x00\x07"
        message = sink.receive()
        assert message is not None
        assert message.payload == b"ok"
        assert sink.receive(timeout=0.5) is None
    finally:
        sink.close()


def test_unreleased_qos2_messages_share_the_queue_budget(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker(max_queued_messages="3")
    sink = Client(broker.port, issue_service("ingest"))
    try:
        assert sink.connect() == 0
        assert sink.subscribe("devices/+/telemetry", qos=2) == [2]
        with raw_client(broker.port, enroll("d1")) as sock:
            for packet_id in range(1, 6):
                sock.sendall(publish("devices/d1/telemetry", str(packet_id).encode(), qos=2,
                                     packet_id=packet_id))
                assert read_packet(sock)[0] == 0x50  # PUBREC, kept or dropped
            assert unreleased(broker, "d1") == 3
            for packet_id in range(1, 6):
                sock.sendall(pubrel(packet_id))
                assert read_packet(sock) == b"\x70\x02" + packet_id.to_bytes(2, "big")
        received = [sink.receive() for _ in range(3)]
        assert [m.payload for m in received if m is not None] == [b"1", b"2", b"3"]
        assert sink.receive(timeout=0.5) is None
        assert len(wait_for_quota_event(sqlite_engine, "max_queued_messages")) == 1
    finally:
        sink.close()


def test_offline_queue_is_bounded_in_bytes(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker(max_queued_bytes="300000")
    credentials = enroll("d1")
    control = Client(broker.port, issue_service("control"))
    try:
        assert control.connect() == 0
        with raw_client(broker.port, credentials, clean_session=False) as sock:
            sock.sendall(subscribe("devices/d1/commands/#"))
            assert suback_codes(sock) == [1]
        assert broker.wait_for(lambda: not broker.server.broker.sessions[  # type: ignore[union-attr]
            "d1"][0].transitions.is_connected())
        for _ in range(5):
            control.publish(COMMANDS, b"x" * 100_000, qos=1)
        device = Client(broker.port, credentials, clean_session=False)
        try:
            assert device.connect() == 0
            received = [device.receive() for _ in range(2)]
            assert all(m is not None for m in received)
            assert device.receive(timeout=0.5) is None
        finally:
            device.close()
        assert len(wait_for_quota_event(sqlite_engine, "max_queued_bytes")) == 1
    finally:
        control.close()
