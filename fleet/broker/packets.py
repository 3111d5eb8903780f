"""The few MQTT 3.1.1 packets the broker builds or parses strictly itself: CONNECT, CONNACK,
outgoing PUBLISH and PUBREL (the rest of the short path is in fleet.broker.connection).

The CONNECT gate parses the first packet strictly before amqtt sees a byte of it; amqtt later
parses the very same bytes, so both read the same client id, will and flags.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fleet.authority import ConnectReturnCode
from fleet.errors import FleetError

CONNECT = 0x10
PUBLISH = 0x30
PROTOCOL_NAME = "MQTT"
PROTOCOL_LEVEL = 4  # MQTT 3.1.1
_MAX_LENGTH_BYTES = 4


class ProtocolError(FleetError):
    """The client broke MQTT 3.1.1; the connection is closed without a CONNACK."""


class UnsupportedProtocolError(ProtocolError):
    """A well-formed CONNECT for another protocol level (MQTT 3.1 or 5): CONNACK 0x01."""


@dataclass(frozen=True, slots=True)
class Connect:
    """A parsed CONNECT packet and the exact bytes it came in."""

    raw: bytes
    client_id: str
    clean_session: bool
    keep_alive: int
    will_topic: str | None
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


async def read_connect(reader: asyncio.StreamReader, *, max_bytes: int) -> bytes:
    """Read the first packet, which must be a CONNECT of at most *max_bytes* bytes."""
    try:
        first = await reader.readexactly(1)
        if first[0] != CONNECT:  # type 1 with flags 0 (MQTT-3.1.0-1, 2.2.2)
            raise ProtocolError(f"first packet is not CONNECT (byte 0x{first[0]:02x})")
        length, multiplier, header = 0, 1, bytearray(first)
        for _ in range(_MAX_LENGTH_BYTES):
            byte = (await reader.readexactly(1))[0]
            header.append(byte)
            length += (byte & 0x7F) * multiplier
            multiplier <<= 7
            if not byte & 0x80:
                break
        else:
            raise ProtocolError("malformed remaining length")
        if len(header) + length > max_bytes:
            raise ProtocolError(f"CONNECT of {len(header) + length} bytes exceeds the limit "
                                f"of {max_bytes}")
        return bytes(header) + await reader.readexactly(length)
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
    offset = 1
    while raw[offset] & 0x80:
        offset += 1
    cursor = _Cursor(raw, offset + 1)
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
    will_topic = None
    if will:
        will_topic = cursor.text("will topic")
        cursor.binary()
    username = cursor.text("user name") if has_username else None
    if has_password:
        cursor.binary()
    if cursor.offset != len(raw):
        raise ProtocolError("CONNECT has trailing bytes")
    return Connect(raw=raw, client_id=client_id, clean_session=bool(flags & 0x02),
                   keep_alive=keep_alive, will_topic=will_topic, will_qos=will_qos,
                   will_retain=will_retain, username=username)


def connack(code: int, *, session_present: bool = False) -> bytes:
    present = session_present and code == ConnectReturnCode.ACCEPTED
    return bytes((0x20, 0x02, 1 if present else 0, code))


def pubrel(packet_id: int) -> bytes:
    """PUBREL (3.6): its fixed header flags are 0010 (MQTT-3.6.1-1)."""
    return b"\x62\x02" + packet_id.to_bytes(2, "big")


def publish(topic: str, payload: bytes | bytearray, *, qos: int = 0, packet_id: int | None = None,
            retain: bool = False, dup: bool = False) -> bytes:
    """An outgoing PUBLISH packet (3.3)."""
    name = topic.encode("utf-8")
    variable = len(name).to_bytes(2, "big") + name
    if qos:
        variable += (packet_id or 0).to_bytes(2, "big")
    first = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return (bytes((first,)) + encode_length(len(variable) + len(payload)) + variable
            + bytes(payload))
