"""The MQTT 3.1.1 codec: the packet types, the remaining-length field, the CONNECT the gate
reads and parses strictly, and the packets the broker writes itself (CONNACK, PUBLISH and the
acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP). fleet.broker.conformance checks the packets
a client sends after its CONNECT with it; fleet.broker.connection reads them.

The CONNECT is parsed once, here, by the gate: the session amqtt runs is made from its
:class:`Connect` (fleet.broker.amqtt_adapter) and amqtt never reads the CONNECT's bytes, so no
second parser can understand one CONNECT another way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fleet.authority import ConnectReturnCode
from fleet.errors import FleetError

(CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE,
 UNSUBACK, PINGREQ, PINGRESP, DISCONNECT) = range(1, 15)
"""Control packet types (2.2.1, table 2.1): the high four bits of the first byte."""
NAMES = ("reserved packet type 0", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC",
         "PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ",
         "PINGRESP", "DISCONNECT", "reserved packet type 15")
PROTOCOL_NAME = "MQTT"
PROTOCOL_LEVEL = 4  # MQTT 3.1.1
MAX_LENGTH_BYTES = 4
"""The remaining-length field is at most four bytes long (2.2.3)."""
MALFORMED = "MQTT-4.8.0-1"
"""The rule a malformed packet, or one a client may not send at all, breaks."""

_ACKNOWLEDGEMENT = {PUBACK: b"\x40\x02", PUBREC: b"\x50\x02", PUBREL: b"\x62\x02",
                    PUBCOMP: b"\x70\x02"}  # PUBREL's header flags are 0010 (MQTT-3.6.1-1)


class ProtocolError(FleetError):
    """The client broke MQTT 3.1.1; the connection is closed without a CONNACK."""


class UnsupportedProtocolError(ProtocolError):
    """A well-formed CONNECT for another protocol level (MQTT 3.1 or 5): CONNACK 0x01."""


class Violation(ProtocolError):
    """A packet breaks *rule* of MQTT 3.1.1: the connection is closed without an answer."""

    def __init__(self, rule: str, problem: str) -> None:
        super().__init__(f"{problem} ({rule})", rule=rule)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Connect:
    """A parsed CONNECT packet (3.1)."""

    client_id: str
    clean_session: bool
    keep_alive: int
    will_topic: str | None
    will_message: bytes | None
    will_qos: int
    will_retain: bool
    username: str | None


def encode_length(length: int) -> bytes:
    """The remaining-length field (2.2.3): 7 bits per byte, high bit = more follows."""
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def decode_length(data: bytes, start: int) -> tuple[int, int] | None:
    """The remaining length (2.2.3) whose field starts at ``data[start]``, and where the field
    ends; None while *data* ends inside the field. A field of more than four bytes is a
    :class:`Violation`."""
    length = shift = 0
    end = min(start + MAX_LENGTH_BYTES, len(data))
    for index in range(start, end):
        byte = data[index]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return length, index + 1
        shift += 7
    if end - start == MAX_LENGTH_BYTES:
        raise Violation(MALFORMED, "remaining length of more than four bytes")
    return None


async def read_connect(reader: asyncio.StreamReader, *, max_bytes: int) -> bytes:
    """Read the first packet, which must be a CONNECT of at most *max_bytes* bytes."""
    try:
        header = await reader.readexactly(1)
        if header[0] != CONNECT << 4:  # type 1 with flags 0 (MQTT-3.1.0-1, 2.2.2)
            raise ProtocolError(f"first packet is not CONNECT (byte 0x{header[0]:02x})")
        while (decoded := decode_length(header, 1)) is None:
            header += await reader.readexactly(1)
        length, end = decoded
        if end + length > max_bytes:
            raise ProtocolError(f"CONNECT of {end + length} bytes exceeds the limit "
                                f"of {max_bytes}")
        return header + await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed before a complete CONNECT") from None


class _Cursor:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.offset = data, offset

    def take(self, n: int) -> bytes:
        end = self.offset + n
        if end > len(self.data):
            raise ProtocolError("CONNECT is shorter than its fields")
        chunk, self.offset = self.data[self.offset:end], end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def uint16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def binary(self) -> bytes:
        return self.take(self.uint16())

    def text(self, what: str) -> str:
        try:
            value = self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not valid UTF-8") from None
        if "\x00" in value:  # 1.5.3 (MQTT-1.5.3-2)
            raise ProtocolError(f"{what} contains U+0000")
        return value


def parse_connect(raw: bytes) -> Connect:
    """Parse a complete CONNECT packet (as returned by :func:`read_connect`) strictly."""
    decoded = decode_length(raw, 1)
    if decoded is None or decoded[0] != len(raw) - decoded[1]:
        raise ProtocolError("CONNECT is not one whole packet")
    cursor = _Cursor(raw, decoded[1])
    name = cursor.text("protocol name")
    level = cursor.byte()
    if name == "MQIsdp":  # MQTT 3.1
        raise UnsupportedProtocolError("MQTT 3.1 (MQIsdp): only MQTT 3.1.1 is served")
    if name != PROTOCOL_NAME:
        raise ProtocolError(f"protocol name {name!r} is not MQTT")
    if level != PROTOCOL_LEVEL:
        raise UnsupportedProtocolError(f"protocol level {level}: only MQTT 3.1.1 (4) is served")
    flags = cursor.byte()
    keep_alive = cursor.uint16()
    if flags & 0x01:
        raise ProtocolError("reserved CONNECT flag is set (MQTT-3.1.2-3)")
    will, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 0x03, bool(flags & 0x20)
    has_password, has_username = bool(flags & 0x40), bool(flags & 0x80)
    if will_qos == 3 or (not will and (will_qos or will_retain)):
        raise ProtocolError("invalid will flags (MQTT-3.1.2-13/14/15)")
    if has_password and not has_username:
        raise ProtocolError("password without user name (MQTT-3.1.2-22)")
    client_id = cursor.text("client identifier")
    will_topic = will_message = None
    if will:
        will_topic = cursor.text("will topic")
        will_message = cursor.binary()
    username = cursor.text("user name") if has_username else None
    if has_password:
        cursor.binary()
    if cursor.offset != len(raw):
        raise ProtocolError("CONNECT has trailing bytes")
    return Connect(client_id=client_id, clean_session=bool(flags & 0x02),
                   keep_alive=keep_alive, will_topic=will_topic, will_message=will_message,
                   will_qos=will_qos, will_retain=will_retain, username=username)


def connack(code: int, *, session_present: bool = False) -> bytes:
    present = session_present and code == ConnectReturnCode.ACCEPTED
    return bytes((0x20, 0x02, 1 if present else 0, code))


def acknowledgement(kind: int, identifier: bytes) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (3.4-3.7) of the packet identifier *identifier*
    (its two bytes, as they came in)."""
    return _ACKNOWLEDGEMENT[kind] + identifier


def pubrel(packet_id: int) -> bytes:
    """PUBREL (3.6) of *packet_id*."""
    return _ACKNOWLEDGEMENT[PUBREL] + packet_id.to_bytes(2, "big")


def publish(topic: str, payload: bytes | bytearray, *, qos: int = 0, packet_id: int | None = None,
            retain: bool = False, dup: bool = False) -> bytes:
    """An outgoing PUBLISH packet (3.3)."""
    name = topic.encode("utf-8")
    variable = len(name).to_bytes(2, "big") + name
    if qos:
        variable += (packet_id or 0).to_bytes(2, "big")
    first = PUBLISH << 4 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return (bytes((first,)) + encode_length(len(variable) + len(payload)) + variable
            + bytes(payload))
