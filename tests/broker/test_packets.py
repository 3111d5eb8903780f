"""The MQTT codec (fleet.broker.packets): the gate's CONNECT parser agrees with amqtt's, a
reference implementation, on every well-formed packet it accepts; PUBLISH and the
acknowledgements parse back; the remaining-length field both ways."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.adapters import BufferReader
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.publish import PublishPacket
from hypothesis import given
from hypothesis import strategies as st

from fleet.acl import is_topic_name
from fleet.broker import packets

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


def text(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return len(data).to_bytes(2, "big") + data


def build_connect(client_id: str, *, clean: bool, keep_alive: int,
                  will: tuple[str, bytes, int, bool] | None, username: str | None,
                  password: bytes | None) -> bytes:
    flags = 0x02 if clean else 0
    payload = text(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += text(topic) + text(message)
    if username is not None:
        flags |= 0x80
        payload += text(username)
        if password is not None:
            flags |= 0x40
            payload += text(password)
    body = text("MQTT") + bytes((4, flags)) + keep_alive.to_bytes(2, "big") + payload
    return bytes((0x10,)) + packets.encode_length(len(body)) + body


@given(TEXT, st.booleans(), st.integers(0, 65535),
       st.one_of(st.none(), st.tuples(TEXT.filter(bool), st.binary(max_size=20),
                                      st.integers(0, 2), st.booleans())),
       st.one_of(st.none(), TEXT), st.one_of(st.none(), st.binary(max_size=20)))
def test_connect_parse_agrees_with_amqtt(client_id: str, clean: bool, keep_alive: int,
                                         will: tuple[str, bytes, int, bool] | None,
                                         username: str | None, password: bytes | None) -> None:
    raw = build_connect(client_id, clean=clean, keep_alive=keep_alive, will=will,
                        username=username, password=password)
    ours = packets.parse_connect(raw)
    theirs = asyncio.run(ConnectPacket.from_stream(BufferReader(raw)))
    if client_id:  # amqtt invents an id for an empty one; the gate refuses those
        assert ours.client_id == theirs.client_id
    assert ours.clean_session == theirs.clean_session_flag
    assert ours.keep_alive == theirs.keep_alive
    assert ours.will_topic == (theirs.will_topic if theirs.will_flag else None)
    assert ours.will_message == (theirs.will_message if theirs.will_flag else None)
    assert (ours.will_qos, ours.will_retain) == (theirs.will_qos or 0, theirs.will_retain_flag)
    assert ours.username == theirs.username


@pytest.mark.parametrize(("raw", "message"), [
    (bytes((0x10, 0x02, 0x00, 0x04)), "shorter than its fields"),
    (build_connect("a", clean=True, keep_alive=0, will=None, username=None, password=None)
     .replace(b"\x00\x01a", b"\x00\x01\xff"), "not valid UTF-8"),
    (build_connect("a\x00b", clean=True, keep_alive=0, will=None, username=None,
                   password=None), r"U\+0000"),
])
def test_connect_parse_refuses_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(packets.ProtocolError, match=message):
        packets.parse_connect(raw)


@given(TEXT.filter(is_topic_name), st.binary(max_size=300), st.integers(0, 2), st.booleans(),
       st.integers(1, 65535))
def test_publish_encoding_parses_back(topic: str, payload: bytes, qos: int, retain: bool,
                                      packet_id: int) -> None:
    raw = packets.publish(topic, payload, qos=qos, packet_id=packet_id, retain=retain)
    parsed = asyncio.run(PublishPacket.from_stream(BufferReader(raw)))
    assert (parsed.topic_name, parsed.data, parsed.qos, parsed.retain_flag) == (
        topic, payload, qos, retain)
    assert parsed.packet_id == (packet_id if qos else None)


@pytest.mark.parametrize(("length", "encoded"), [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
    (268435455, b"\xff\xff\xff\x7f"),
])
def test_remaining_length_encoding(length: int, encoded: bytes) -> None:
    """MQTT 3.1.1 table 2.4."""
    assert packets.encode_length(length) == encoded


@pytest.mark.parametrize(("length", "encoded"), [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f"),
])
def test_remaining_length_decoding(length: int, encoded: bytes) -> None:
    """MQTT 3.1.1 table 2.4, read back from inside a packet: (length, end of the field)."""
    assert packets.decode_length(b"\x30" + encoded + b"rest", 1) == (length, 1 + len(encoded))


@pytest.mark.parametrize("partial", [b"", b"\x80", b"\xff\xff", b"\xff\xff\xff"])
def test_remaining_length_cut_short_asks_for_more(partial: bytes) -> None:
    assert packets.decode_length(b"\x30" + partial, 1) is None


def test_remaining_length_of_five_bytes_is_a_violation() -> None:
    with pytest.raises(packets.Violation, match="more than four bytes") as raised:
        packets.decode_length(b"\x30\xff\xff\xff\xff\x7f", 1)
    assert raised.value.rule == packets.MALFORMED


@pytest.mark.parametrize(("kind", "first"), [
    (packets.PUBACK, 0x40), (packets.PUBREC, 0x50), (packets.PUBREL, 0x62),
    (packets.PUBCOMP, 0x70),
])
def test_acknowledgements(kind: int, first: int) -> None:
    """3.4-3.7: type, flags (0010 only for PUBREL, MQTT-3.6.1-1), remaining length 2, the
    packet identifier as it came in."""
    assert packets.acknowledgement(kind, b"\x12\x34") == bytes((first, 0x02, 0x12, 0x34))
    if kind == packets.PUBREL:
        assert packets.pubrel(0x1234) == bytes((first, 0x02, 0x12, 0x34))
