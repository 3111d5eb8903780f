"""Per-client and per-device quotas: what one identity may make the broker hold.

    max_packet_bytes        any packet, CONNECT included: larger closes the connection
    max_queued_messages     per client, one budget for what waits to be written to it or
    max_queued_bytes          released by it: deliveries held for it (queued offline, or
                              QoS 1/2 not yet acknowledged), inbound QoS 2 messages not yet
                              released, and QoS 0 packets not yet flushed; beyond
                              either, new messages for it are dropped
    qos2_release_timeout    an inbound QoS 2 message not released in time is discarded
    max_subscriptions       filters per session (and at most MAX_FILTER_BYTES and
                              MAX_FILTER_LEVELS each); beyond: SUBACK 0x80
    max_retained_messages   retained messages per device, over every topic it set one on,
    max_retained_bytes        in count and bytes; beyond: routed, but not retained

A refusal is reported once per episode: the first one after the client was within the
quota (see :class:`Budget` and :class:`RetainedLedger` for when an episode ends).
:func:`pinned_bytes` states the memory one device can pin under given quotas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.broker.connection import Connection
    from fleet.settings import Settings

OnQuota = Callable[["Connection | None", str, str], None]
"""``on_quota(connection, quota, detail)``: the first refusal of an episode, *quota* being
the name of the setting (``max_queued_bytes``...)."""

CACHED_TOPIC_LENGTH = 256
"""Longer topics are never cached (policy decisions per connection, filter matches): caches
of 64 KiB topic names would pin megabytes."""

MAX_FILTER_BYTES = 1024
MAX_FILTER_LEVELS = 32
"""Bounds on one topic filter (each level is a node of the subscription tree); like AWS IoT's
limits on topic filters, far above what the topic policy's templates need."""

# Measured object sizes (CPython 3.11, 64-bit), for pinned_bytes: a held delivery is an
# OutgoingApplicationMessage plus its dict slot; a retained message a RetainedApplicationMessage,
# its ledger entry and two dict slots; a filter its tree nodes, strings and table entries.
HELD_MESSAGE_OVERHEAD = 1024
RETAINED_MESSAGE_OVERHEAD = 1024
FILTER_LEVEL_OVERHEAD = 512
CONNECTION_OVERHEAD = 256 * 1024
"""A session, its connection, amqtt's handler and tasks, the TLS objects, the topic caches,
the TCP transport's buffer (its high-water mark) and one read chunk, with the reader's
buffer counted apart."""


@dataclass(frozen=True, slots=True)
class Quotas:
    """The limits, from the ``[broker]`` settings of the same names."""

    max_packet_bytes: int
    max_queued_messages: int
    max_queued_bytes: int
    max_subscriptions: int
    max_retained_messages: int
    max_retained_bytes: int
    qos2_release_timeout: float

    def within_queue(self, messages: int, size: int) -> bool:
        """Do *messages* held messages of *size* bytes in all fit one client's queue budget?"""
        return messages <= self.max_queued_messages and size <= self.max_queued_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        return cls(max_packet_bytes=settings.max_packet_bytes,
                   max_queued_messages=settings.max_queued_messages,
                   max_queued_bytes=settings.max_queued_bytes,
                   max_subscriptions=settings.max_subscriptions,
                   max_retained_messages=settings.max_retained_messages,
                   max_retained_bytes=settings.max_retained_bytes,
                   qos2_release_timeout=settings.qos2_release_timeout.total_seconds())


def pinned_bytes(quotas: Quotas) -> int:
    """The most memory one device can make the broker hold for it (one session: a client id
    is connected at most once).

    Its queue budget twice (what is held, and the copy of each held QoS 1/2 delivery that
    may still wait in the socket), each held message's object overhead, its retained
    messages, its filters, one packet being read, and the session and connection
    themselves. What it publishes to others is held against THEIR budgets; the broker-wide
    topic match cache is a fixed cost (fleet.broker.subscriptions).
    """
    return (2 * quotas.max_queued_bytes + quotas.max_queued_messages * HELD_MESSAGE_OVERHEAD
            + quotas.max_retained_bytes
            + quotas.max_retained_messages * RETAINED_MESSAGE_OVERHEAD
            + quotas.max_subscriptions * (2 * MAX_FILTER_BYTES
                                          + MAX_FILTER_LEVELS * FILTER_LEVEL_OVERHEAD)
            + quotas.max_packet_bytes + CONNECTION_OVERHEAD)


def weight(topic: str, data: bytes | bytearray) -> int:
    """What a held message counts against a byte quota: its topic and payload."""
    return len(topic) + len(data)


QUEUE = 1
SUBSCRIPTIONS = 2


class Budget:
    """What one session holds against its queue quotas, and the quotas it is refusing.

    ``messages`` and ``bytes`` count the deliveries held for it and the inbound QoS 2
    messages it has not released (fleet.broker.session keeps them up to date); ``over`` has
    a bit per quota in an episode. A queue episode ends when a message is admitted with the
    budget at most half used, so a consumer hovering at its limit is reported once, not at
    every freed slot.
    """

    __slots__ = ("bytes", "messages", "over")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.over = 0

    def add(self, size: int) -> None:
        self.messages += 1
        self.bytes += size

    def remove(self, size: int) -> None:
        self.messages -= 1
        self.bytes -= size

    def clear(self) -> None:
        self.messages = self.bytes = 0

    def begins(self, quota: int) -> bool:
        """A refusal under *quota* (QUEUE, SUBSCRIPTIONS): True if it starts an episode."""
        starts = not self.over & quota
        self.over |= quota
        return starts

    def ends(self, quota: int) -> None:
        self.over &= ~quota


class RetainedLedger:
    """Which device set each retained message, and how much each device has retained.

    Messages retained by services or by the broker are not charged (a service retaining a
    command for every device is the design, not an abuse) but still free the quota of the
    device whose message they replace. A device's episode ends when it next retains one.
    """

    def __init__(self, *, max_messages: int, max_bytes: int) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._owners: dict[str, str] = {}  # topic -> device id
        self._held: dict[str, dict[str, int]] = {}  # device id -> {topic: weight}
        self._bytes: dict[str, int] = {}  # device id -> the sum of its weights
        self._over: set[str] = set()

    def owner(self, topic: str) -> str | None:
        """The device charged with the retained message of *topic* (None: nobody is)."""
        return self._owners.get(topic)

    def usage(self, device_id: str) -> tuple[int, int]:
        return len(self._held.get(device_id, ())), self._bytes.get(device_id, 0)

    def refusal(self, device_id: str | None, topic: str, size: int) -> str | None:
        """The quota that retaining *size* bytes on *topic* would exceed, or None."""
        if device_id is None:
            return None
        messages, total = self.usage(device_id)
        if self._owners.get(topic) == device_id:  # a replacement
            messages, total = messages - 1, total - self._held[device_id][topic]
        if messages + 1 > self._max_messages:
            return "max_retained_messages"
        if total + size > self._max_bytes:
            return "max_retained_bytes"
        return None

    def begins(self, device_id: str) -> bool:
        """A refusal for *device_id*: True if it starts an episode."""
        starts = device_id not in self._over
        self._over.add(device_id)
        return starts

    def set(self, device_id: str | None, topic: str, size: int) -> None:
        """*device_id* (None: not charged) retained *size* bytes on *topic*."""
        self.clear(topic)
        if device_id is None:
            return
        self._owners[topic] = device_id
        self._held.setdefault(device_id, {})[topic] = size
        self._bytes[device_id] = self._bytes.get(device_id, 0) + size
        self._over.discard(device_id)

    def clear(self, topic: str) -> None:
        """The retained message of *topic* is gone: free its owner's quota."""
        device_id = self._owners.pop(topic, None)
        if device_id is None:
            return
        held = self._held[device_id]
        self._bytes[device_id] -= held.pop(topic)
        if not held:
            del self._held[device_id], self._bytes[device_id]

    def release(self, device_id: str) -> list[str]:
        """Forget what *device_id* retained, its episode included; the topics of its
        messages (which the broker then drops)."""
        held = self._held.pop(device_id, {})
        self._bytes.pop(device_id, None)
        self._over.discard(device_id)
        for topic in held:
            del self._owners[topic]
        return list(held)
