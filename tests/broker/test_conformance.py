"""MQTT 3.1.1 "MUST close the Network Connection" rules for the packets after CONNECT.

Each case is a hand-made packet that breaks one normative statement of the specification,
sent over real TLS by an admitted device holding a persistent session, followed by a valid
PUBLISH. The broker answers nothing, closes the connection, routes neither message, makes no
subscription, and records the refusal (``broker.protocol``) naming the rule. A near miss of
every case, conforming, is served (:func:`test_conforming_packets_are_served`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine

from .conftest import Enroll
from .helpers import (
    BrokerThread,
    Client,
    Credentials,
    audit_events,
    connect_packet,
    received_until_closed,
    wait_until,
)
from .quota_helpers import (
    packet,
    publish,
    pubrel,
    raw_client,
    read_packet,
    subscribe,
    text,
    unsubscribe,
)

TELEMETRY = "devices/d1/telemetry"  # the sink below receives what d1 publishes here
COMMANDS = "devices/d1/commands/#"  # d1 may subscribe to it
ID = b"\x00\x07"
ZERO = b"\x00\x00"


def case(rule: str, what: str, data: bytes) -> object:
    return pytest.param(rule, data, id=f"{rule} {what}")


VIOLATIONS = [
    # 2.2.2 table 2.2: the flags of every packet type but PUBLISH are fixed.
    case("MQTT-2.2.2-2", "PUBREL flags 0000", packet(0x60, ID)),
    case("MQTT-2.2.2-2", "SUBSCRIBE flags 0000", packet(0x80, ID + text(COMMANDS) + b"\x01")),
    case("MQTT-2.2.2-2", "SUBSCRIBE flags 0011", packet(0x83, ID + text(COMMANDS) + b"\x01")),
    case("MQTT-2.2.2-2", "UNSUBSCRIBE flags 0000", packet(0xA0, ID + text(COMMANDS))),
    case("MQTT-2.2.2-2", "PUBACK flags 0010", packet(0x42, ID)),
    case("MQTT-2.2.2-2", "PUBREC flags 0001", packet(0x51, ID)),
    case("MQTT-2.2.2-2", "PUBCOMP flags 1000", packet(0x78, ID)),
    case("MQTT-2.2.2-2", "PINGREQ flags 0001", packet(0xC1, b"")),
    case("MQTT-2.2.2-2", "DISCONNECT flags 0010", packet(0xE2, b"")),
    # 3.3.1: PUBLISH flags.
    case("MQTT-3.3.1-4", "PUBLISH QoS 3", packet(0x36, text(TELEMETRY) + ID + b"x")),
    case("MQTT-3.3.1-2", "PUBLISH QoS 0 with DUP", packet(0x38, text(TELEMETRY) + b"x")),
    # 3.3.2 and 4.7: the topic name of a PUBLISH.
    case("MQTT-3.3.2-2", "PUBLISH to a + wildcard", publish("devices/+/telemetry", b"x")),
    case("MQTT-3.3.2-2", "PUBLISH to a # wildcard", publish("devices/d1/#", b"x")),
    case("MQTT-4.7.3-1", "PUBLISH to an empty topic", publish("", b"x")),
    case("MQTT-1.5.3-1", "PUBLISH topic not UTF-8", packet(0x30, text(b"devices/\xff") + b"x")),
    case("MQTT-1.5.3-1", "PUBLISH topic with a surrogate",
         packet(0x30, text(b"devices/d1/\xed\xa0\x80") + b"x")),
    case("MQTT-1.5.3-2", "PUBLISH topic with U+0000", publish("devices/d1/tele\0metry", b"x")),
    case("MQTT-2.3.1-1", "PUBLISH QoS 1 packet identifier 0",
         packet(0x32, text(TELEMETRY) + ZERO + b"x")),
    case("MQTT-2.3.1-1", "PUBLISH QoS 2 packet identifier 0",
         packet(0x34, text(TELEMETRY) + ZERO + b"x")),
    case("MQTT-4.8.0-1", "PUBLISH shorter than its topic", packet(0x30, b"\x00\x40devices")),
    # 3.8: SUBSCRIBE.
    case("MQTT-3.8.3-3", "SUBSCRIBE without a filter", packet(0x82, ID)),
    case("MQTT-3.8.3-4", "SUBSCRIBE requested QoS 3",
         packet(0x82, ID + text(COMMANDS) + b"\x01" + text("devices/d1/commands/x") + b"\x03")),
    case("MQTT-3.8.3-4", "SUBSCRIBE reserved bits set",
         packet(0x82, ID + text(COMMANDS) + b"\x41")),
    case("MQTT-4.8.0-1", "SUBSCRIBE without its requested QoS", packet(0x82, ID + text(COMMANDS))),
    case("MQTT-2.3.1-1", "SUBSCRIBE packet identifier 0",
         packet(0x82, ZERO + text(COMMANDS) + b"\x01")),
    case("MQTT-1.5.3-1", "SUBSCRIBE filter not UTF-8",
         packet(0x82, ID + text(COMMANDS) + b"\x01" + text(b"devices/d1/commands/\xc0\xaf")
                + b"\x01")),
    case("MQTT-1.5.3-2", "SUBSCRIBE filter with U+0000",
         subscribe(COMMANDS, "devices/d1/commands/\0")),
    case("MQTT-4.7.3-1", "SUBSCRIBE empty filter", subscribe(COMMANDS, "")),
    case("MQTT-4.7.1-2", "SUBSCRIBE # not last", subscribe(COMMANDS, "devices/#/commands")),
    case("MQTT-4.7.1-2", "SUBSCRIBE # inside a level", subscribe(COMMANDS, "devices/d1/commands#")),
    case("MQTT-4.7.1-3", "SUBSCRIBE + inside a level", subscribe(COMMANDS, "devices/d+/commands")),
    case("MQTT-4.8.0-1", "SUBSCRIBE filter past the end",
         packet(0x82, ID + b"\x00\x40devices/d1" + b"\x01")),
    # 3.10: UNSUBSCRIBE.
    case("MQTT-3.10.3-2", "UNSUBSCRIBE without a filter", packet(0xA2, ID)),
    case("MQTT-2.3.1-1", "UNSUBSCRIBE packet identifier 0", packet(0xA2, ZERO + text(COMMANDS))),
    case("MQTT-1.5.3-1", "UNSUBSCRIBE filter not UTF-8",
         packet(0xA2, ID + text(b"devices/\xe0\x80\x80"))),
    case("MQTT-1.5.3-2", "UNSUBSCRIBE filter with U+0000", unsubscribe(COMMANDS, "a\0b")),
    case("MQTT-4.7.1-3", "UNSUBSCRIBE + inside a level", unsubscribe("devices/d1+")),
    # 3.1.0: one CONNECT per connection.
    case("MQTT-3.1.0-2", "a second CONNECT", connect_packet("d1")),
    # Table 2.1: reserved types, and the packets only a server sends.
    case("MQTT-4.8.0-1", "reserved packet type 0", packet(0x00, b"")),
    case("MQTT-4.8.0-1", "reserved packet type 15", packet(0xF0, b"")),
    case("MQTT-4.8.0-1", "CONNACK from a client", packet(0x20, b"\x00\x00")),
    case("MQTT-4.8.0-1", "SUBACK from a client", packet(0x90, ID + b"\x01")),
    case("MQTT-4.8.0-1", "UNSUBACK from a client", packet(0xB0, ID)),
    case("MQTT-4.8.0-1", "PINGRESP from a client", packet(0xD0, b"")),
    # 2.2.3 and the variable headers of fixed size.
    case("MQTT-4.8.0-1", "remaining length of five bytes", b"\x30\xff\xff\xff\xff\x01"),
    case("MQTT-4.8.0-1", "PUBACK of remaining length 3", packet(0x40, ID + b"\x00")),
    case("MQTT-4.8.0-1", "PUBREL of remaining length 1", packet(0x62, b"\x07")),
    case("MQTT-4.8.0-1", "PINGREQ with a payload", packet(0xC0, b"\x00")),
    case("MQTT-4.8.0-1", "DISCONNECT with a payload", packet(0xE0, b"\x00")),
]


def subscribed(broker: BrokerThread, client_id: str) -> set[str]:
    """The filters *client_id* holds in the broker's subscription table."""
    assert broker.server is not None
    table = broker.server.broker.subscriptions
    return broker.run(lambda: {f for f, subscribers in table.items() if client_id in subscribers})


def protocol_refusals(engine: Engine) -> list[tuple[str | None, object, str]]:
    """Device, rule and reason of every ``broker.protocol`` refusal."""
    return [(e.device_id, json.loads(e.detail or "{}").get("rule"), e.reason or "")
            for e in audit_events(engine, "broker.protocol") if e.outcome == "refused"]


@pytest.fixture
def sink(issue_service: Callable[[str], Credentials], connect: Callable[..., Client]) -> Client:
    """A service receiving d1's telemetry."""
    client = connect(issue_service("ingest"))
    assert client.subscribe("devices/+/telemetry") == [1]
    return client


@pytest.mark.parametrize(("rule", "violation"), VIOLATIONS)
def test_violation_closes_the_connection(rule: str, violation: bytes, enroll: Enroll,
                                         broker: BrokerThread, sink: Client,
                                         sqlite_engine: Engine) -> None:
    with raw_client(broker.port, enroll("d1"), clean_session=False) as sock:
        sock.sendall(violation + publish(TELEMETRY, b"after the violation"))
        assert received_until_closed(sock, 5) == b""  # closed, and nothing answered
    assert sink.receive(timeout=0.3) is None
    assert subscribed(broker, "d1") == set()
    assert wait_until(lambda: bool(protocol_refusals(sqlite_engine)))
    [(device_id, recorded_rule, reason)] = protocol_refusals(sqlite_engine)
    assert (device_id, recorded_rule) == ("d1", rule)
    assert reason.endswith(f"({rule})")


def test_conforming_packets_are_served(enroll: Enroll, broker: BrokerThread, sink: Client,
                                       sqlite_engine: Engine) -> None:
    """The near misses of the cases above, as a client must send them, are answered."""
    with raw_client(broker.port, enroll("d1"), clean_session=False) as sock:
        sock.sendall(subscribe(COMMANDS, "devices/d1/commands/+/x", qos=2, packet_id=7))
        assert read_packet(sock) == b"\x90\x04\x00\x07\x02\x02"  # SUBACK
        sock.sendall(publish(TELEMETRY, b"q1", qos=1, packet_id=7))
        assert read_packet(sock) == b"\x40\x02\x00\x07"  # PUBACK
        sock.sendall(publish(TELEMETRY, b"q2", qos=2, packet_id=8))
        assert read_packet(sock) == b"\x50\x02\x00\x08"  # PUBREC
        sock.sendall(pubrel(8))
        assert read_packet(sock) == b"\x70\x02\x00\x08"  # PUBCOMP
        sock.sendall(publish(TELEMETRY, b"q0") + packet(0xC0, b""))
        assert read_packet(sock) == b"\xd0\x00"  # PINGRESP
        sock.sendall(unsubscribe("devices/d1/commands/+/x", packet_id=9))
        assert read_packet(sock) == b"\xb0\x02\x00\x09"  # UNSUBACK
        assert subscribed(broker, "d1") == {COMMANDS}
        sock.sendall(packet(0xE0, b""))
        assert received_until_closed(sock, 5) == b""
    payloads = [sink.receive() for _ in range(3)]
    assert [m.payload for m in payloads if m is not None] == [b"q1", b"q2", b"q0"]
    assert protocol_refusals(sqlite_engine) == []
