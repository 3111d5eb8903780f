"""The MQTT 3.1.1 rules every packet a client sends after its CONNECT must keep.

A receiver that meets a protocol violation MUST close the Network Connection (MQTT-4.8.0-1),
and most rules below say so themselves. ConnectionReader hands every packet here, whole,
before anything acts on it; a :class:`~fleet.broker.packets.Violation` closes the connection
without an answer and is audited with the rule it names. Packet types, names and the
remaining-length field come from the codec, fleet.broker.packets, which also parses the
CONNECT itself strictly (``parse_connect``, for the gate).

- packet type: not reserved (0, 15), not a second CONNECT (MQTT-3.1.0-2), not one that only
  a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP; table 2.1);
- fixed header flags: 0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0000 for every other type
  but PUBLISH (MQTT-2.2.2-2); a PUBLISH has no QoS 3 (MQTT-3.3.1-4) and no DUP at QoS 0
  (MQTT-3.3.1-2);
- remaining length: at most four bytes (2.2.3, ``packets.decode_length``, which
  ConnectionReader calls for every packet); 2 for PUBACK, PUBREC, PUBREL and PUBCOMP, 0 for
  PINGREQ and DISCONNECT; every field fits inside it;
- PUBLISH: a topic name of well-formed UTF-8 (MQTT-1.5.3-1) without U+0000 (MQTT-1.5.3-2),
  at least one character long (MQTT-4.7.3-1) and without wildcards (MQTT-3.3.2-2); a
  non-zero packet identifier at QoS 1 and 2 (MQTT-2.3.1-1);
- SUBSCRIBE and UNSUBSCRIBE: a non-zero packet identifier (MQTT-2.3.1-1), at least one topic
  filter (MQTT-3.8.3-3, MQTT-3.10.3-2), each a string as above whose ``#`` is a whole last
  level (MQTT-4.7.1-2) and whose ``+`` fills a whole level (MQTT-4.7.1-3); each requested
  QoS of a SUBSCRIBE is 0, 1 or 2, its reserved bits zero (MQTT-3.8.3-4).

A PUBLISH costs a table look-up of its first byte, three scans of its topic name and its
decoding, which the broker needs anyway.
"""

from __future__ import annotations

from fleet.acl import is_topic_filter
from fleet.broker.packets import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    MALFORMED,
    NAMES,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    Violation,
)

_SERVER_ONLY = frozenset((CONNACK, SUBACK, UNSUBACK, PINGRESP))
_FLAGS = {PUBREL: 0b0010, SUBSCRIBE: 0b0010, UNSUBSCRIBE: 0b0010}  # table 2.2; others 0
_REMAINING = {PUBACK: 2, PUBREC: 2, PUBREL: 2, PUBCOMP: 2, PINGREQ: 0, DISCONNECT: 0}
_NUL, _PLUS, _HASH = 0x00, 0x2B, 0x23  # looked for as ints: much cheaper than as bytes


def _first_byte(byte: int) -> tuple[str, str] | None:
    """The rule a packet starting with *byte* breaks whatever follows, and how."""
    kind, flags = byte >> 4, byte & 0x0F
    if kind == PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            return "MQTT-3.3.1-4", "PUBLISH with QoS 3"
        if qos == 0 and flags & 0x08:
            return "MQTT-3.3.1-2", "QoS 0 PUBLISH with DUP set"
        return None
    if kind == CONNECT:
        return "MQTT-3.1.0-2", "a second CONNECT on the connection"
    if kind in (0, 15):
        return MALFORMED, f"{NAMES[kind]}, which is forbidden"
    if kind in _SERVER_ONLY:
        return MALFORMED, f"{NAMES[kind]}, which only a server sends"
    expected = _FLAGS.get(kind, 0)
    if flags != expected:
        return "MQTT-2.2.2-2", f"{NAMES[kind]} with header flags {flags:04b}, not {expected:04b}"
    return None


_FIRST_BYTE = tuple(_first_byte(byte) for byte in range(256))


def check(packet: bytes, header: int) -> tuple[str, int] | None:
    """Raise :class:`Violation` if *packet* (whole, its fixed header *header* bytes long)
    breaks a rule; for a PUBLISH, return its topic name and where its payload starts."""
    first = packet[0]
    problem = _FIRST_BYTE[first]
    if problem is not None:
        raise Violation(*problem)
    kind = first >> 4
    if kind != PUBLISH:
        remaining = _REMAINING.get(kind)
        if remaining is None:
            _filters(packet, header, subscribe=kind == SUBSCRIBE)
        elif len(packet) - header != remaining:
            raise Violation(MALFORMED, f"{NAMES[kind]} of remaining length "
                                       f"{len(packet) - header}, not {remaining}")
        return None
    qos = (first >> 1) & 0x03
    start = header + 2
    end = start + (packet[header] << 8 | packet[header + 1]) if start <= len(packet) else start
    payload = end + 2 if qos else end
    if payload > len(packet):
        raise Violation(MALFORMED, "PUBLISH shorter than its topic name"
                                   + (" and packet identifier" if qos else ""))
    name = packet[start:end]
    if not name:
        raise Violation("MQTT-4.7.3-1", "PUBLISH with an empty topic name")
    if _PLUS in name or _HASH in name:  # ASCII bytes never occur inside a UTF-8 sequence
        raise Violation("MQTT-3.3.2-2", "PUBLISH topic name with a wildcard")
    topic = _string(name, "PUBLISH topic name")
    if qos and not (packet[end] or packet[end + 1]):
        raise Violation("MQTT-2.3.1-1", f"QoS {qos} PUBLISH with packet identifier 0")
    return topic, payload


def _filters(packet: bytes, header: int, *, subscribe: bool) -> None:
    """The packet identifier and topic filters of a SUBSCRIBE or UNSUBSCRIBE."""
    name, end = NAMES[SUBSCRIBE if subscribe else UNSUBSCRIBE], len(packet)
    offset = header + 2
    if offset > end:
        raise Violation(MALFORMED, f"{name} shorter than its packet identifier")
    if packet[header] == 0 and packet[header + 1] == 0:
        raise Violation("MQTT-2.3.1-1", f"{name} with packet identifier 0")
    if offset == end:
        raise Violation("MQTT-3.8.3-3" if subscribe else "MQTT-3.10.3-2",
                        f"{name} without a topic filter")
    while offset < end:
        start = offset + 2
        offset = start + int.from_bytes(packet[start - 2:start], "big")
        if offset > end:
            raise Violation(MALFORMED, f"{name} shorter than its topic filter")
        _topic_filter(_string(packet[start:offset], f"{name} topic filter"), name)
        if subscribe:
            if offset == end:
                raise Violation(MALFORMED, "SUBSCRIBE topic filter without its requested QoS")
            if packet[offset] > 2:
                raise Violation("MQTT-3.8.3-4",
                                f"SUBSCRIBE requested QoS byte 0x{packet[offset]:02x}")
            offset += 1


def _topic_filter(topic_filter: str, name: str) -> None:
    if not topic_filter:
        raise Violation("MQTT-4.7.3-1", f"{name} with an empty topic filter")
    if is_topic_filter(topic_filter):
        return
    hashes = topic_filter.count("#")
    if hashes > 1 or (hashes == 1 and topic_filter != "#" and not topic_filter.endswith("/#")):
        raise Violation("MQTT-4.7.1-2", f"{name} topic filter {topic_filter[:100]!r} with # "
                                        "that is not a whole last level")
    raise Violation("MQTT-4.7.1-3", f"{name} topic filter {topic_filter[:100]!r} with + "
                                    "that is not a whole level")


def _string(data: bytes, what: str) -> str:
    """A UTF-8 encoded string (1.5.3)."""
    if _NUL in data:
        raise Violation("MQTT-1.5.3-2", f"{what} contains U+0000")
    try:
        return data.decode("utf-8")  # strict: no surrogates, no overlong forms (RFC 3629)
    except UnicodeDecodeError:
        raise Violation("MQTT-1.5.3-1", f"{what} is not well-formed UTF-8") from None
