"""QoS 2 deliveries: exactly once, resumed across connections (MQTT-4.3.3, MQTT-4.4.0-1).

A delivery whose PUBREC is missing is resent as PUBLISH with DUP set; one whose PUBCOMP is
missing is resent as PUBREL. Raw TLS sockets play the subscriber that stops mid-flow.
"""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Enroll
from .helpers import BrokerThread, Client, Credentials, wait_until
from .test_08_qos1_redelivery import FILTER, TOPIC, inflight, persistent, read_packet, read_publish

QOS2 = 2


def pubrec(packet_id: int) -> bytes:
    return b"\x50\x02" + packet_id.to_bytes(2, "big")


def pubcomp(packet_id: int) -> bytes:
    return b"\x70\x02" + packet_id.to_bytes(2, "big")


def pubrel(packet_id: int) -> bytes:
    return b"\x62\x02" + packet_id.to_bytes(2, "big")


def test_qos2_end_to_end_exactly_once(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    device = connect(enroll("d1"))
    assert device.subscribe(FILTER, qos=QOS2) == [QOS2]
    control = connect(issue_service("control"))
    for payload in (b"1", b"2", b"3"):
        control.publish(TOPIC, payload, qos=QOS2)
    received = [device.receive() for _ in range(3)]
    assert [(m.payload, m.qos) for m in received if m is not None] == [
        (b"1", QOS2), (b"2", QOS2), (b"3", QOS2)]
    assert device.receive(timeout=0.5) is None
    assert wait_until(lambda: not inflight(broker, "d1"))


def test_qos2_flow_answers_pubrec_with_pubrel_and_ends_at_pubcomp(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True, qos=QOS2) as sock:
        control.publish(TOPIC, b"1", qos=QOS2)
        first, topic, packet_id, payload = read_publish(sock)
        assert (first, topic, payload) == (0x34, TOPIC, b"1")  # QoS 2, DUP 0
        sock.sendall(pubrec(packet_id))
        assert read_packet(sock) == pubrel(packet_id)
        assert inflight(broker, "d1") == [packet_id]  # released, not yet complete
        sock.sendall(pubcomp(packet_id))
        assert wait_until(lambda: not inflight(broker, "d1"))


def test_qos2_publish_without_pubrec_resent_with_dup_on_resume(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True, qos=QOS2) as sock:
        control.publish(TOPIC, b"1", qos=QOS2)
        packet_id = read_publish(sock)[2]
    with persistent(broker, credentials) as sock:  # dropped again without PUBREC
        assert read_publish(sock) == (0x3C, TOPIC, packet_id, b"1")  # QoS 2, DUP 1
    device = connect(credentials, clean_session=False)
    message = device.receive()
    assert message is not None
    assert (message.payload, message.qos, message.dup, message.mid) == (
        b"1", QOS2, True, packet_id)
    assert device.receive(timeout=0.5) is None
    assert wait_until(lambda: not inflight(broker, "d1"))


def test_qos2_pubrel_without_pubcomp_resent_on_resume(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True, qos=QOS2) as sock:
        control.publish(TOPIC, b"1", qos=QOS2)
        packet_id = read_publish(sock)[2]
        sock.sendall(pubrec(packet_id))
        assert read_packet(sock) == pubrel(packet_id)
    with persistent(broker, credentials) as sock:
        # The message was received: only the release is repeated, never the PUBLISH.
        assert read_packet(sock) == pubrel(packet_id)
        sock.sendall(pubcomp(packet_id))
        assert wait_until(lambda: not inflight(broker, "d1"))
        control.publish(TOPIC, b"2", qos=QOS2)
        assert read_publish(sock)[3] == b"2"


def test_offline_queued_qos2_delivered_at_qos2_on_resume(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    credentials = enroll("d1")
    control = connect(issue_service("control"))
    with persistent(broker, credentials, subscribe=True, qos=QOS2):
        pass
    control.publish(TOPIC, b"queued", qos=QOS2)
    device = connect(credentials, clean_session=False)
    message = device.receive()
    assert message is not None
    assert (message.payload, message.qos, message.retain) == (b"queued", QOS2, False)
    assert wait_until(lambda: not inflight(broker, "d1"))


def test_pubrec_for_an_unknown_packet_id_is_released_and_changes_nothing(
        enroll: Enroll, broker: BrokerThread) -> None:
    credentials = enroll("d1")
    with persistent(broker, credentials, subscribe=True, qos=QOS2) as sock:
        sock.sendall(pubrec(4242))
        assert read_packet(sock) == pubrel(4242)  # lets the client end its own state
        sock.sendall(pubcomp(4242))
        assert inflight(broker, "d1") == []


def test_qos2_publish_from_a_device_routed_exactly_once(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    sink = connect(issue_service("ingest"))
    assert sink.subscribe("devices/+/telemetry", qos=QOS2) == [QOS2]
    device = connect(enroll("d1"))
    device.publish("devices/d1/telemetry", b"21.5", qos=QOS2)  # PUBREC/PUBREL/PUBCOMP inbound
    message = sink.receive()
    assert message is not None
    assert (message.topic, message.payload, message.qos) == ("devices/d1/telemetry", b"21.5", QOS2)
    assert sink.receive(timeout=0.5) is None
