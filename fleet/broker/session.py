"""amqtt sessions without a ``transitions`` state machine per client, and what a session
holds: the QoS 1 and 2 deliveries the broker writes itself, the messages queued while it is
offline and the inbound QoS 2 messages it has not released, each counted in its
:class:`~fleet.broker.quotas.Budget`; and when a persistent session whose client stays away
expires (:class:`Away`).

Stock ``amqtt.session.Session`` builds a ``transitions.Machine`` for every client: about
0.4 ms of CPU and 23 KiB per session, for three states. :class:`FleetSession` keeps the same
states and the same interface amqtt's broker uses (``state``, ``connect()``,
``disconnect()``, ``is_connected()``) as a plain attribute.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from amqtt.mqtt.protocol import broker_handler
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.session import ApplicationMessage, OutgoingApplicationMessage, Session

from fleet.broker.quotas import Budget, weight

SENT = PublishPacket()
"""``publish_packet`` of an outgoing QoS 1/2 message written by the broker itself (every one
is: amqtt's protocol handler only runs the inbound QoS 2 flow)."""

RELEASED = PubrelPacket()
"""``pubrel_packet`` of an outgoing QoS 2 message once its PUBREC arrived and PUBREL went out."""

T = TypeVar("T")


class Mailbox(Generic[T]):
    """An unbounded queue with one consumer, for what amqtt keeps in ``asyncio.Queue`` objects
    per client: the messages queued for an offline session and the SUBSCRIBE / UNSUBSCRIBE
    packets waiting for the broker. An ``asyncio.Queue`` holds four deques and an Event (about
    3 KiB) for a handful of items in a session's life; this holds a list and, while its
    consumer waits, one future.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        """What it holds, oldest first (left in place)."""
        return iter(list(self._items))


class SessionStates:
    """new -> connected <-> disconnected, as amqtt's Session machine defines them."""

    __slots__ = ("_session", "state")

    def __init__(self, session: Session) -> None:
        self._session = session
        self.state = "new"

    def connect(self) -> None:
        if self.state == "connected":
            raise ValueError("session is already connected")  # amqtt expects this on takeover
        self.state = "connected"
        self._session._on_enter_connected()

    def disconnect(self) -> None:
        self.state = "disconnected"
        self._session._on_enter_disconnected()

    def is_connected(self) -> bool:
        return self.state == "connected"


class Unreleased:
    """Inbound QoS 2 messages received (PUBREC sent) and not yet released by PUBREL (4.3.3,
    method A), oldest first; each is discarded when its deadline passes, whether or not a
    connection holds the session, and its budget freed.

    Every message gets the same timeout, so deadlines follow insertion order: one timer, for
    the oldest message, serves them all.
    """

    __slots__ = ("_budget", "_messages", "_timer")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._messages: dict[int, tuple[float, str, bytes, bool]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __contains__(self, packet_id: object) -> bool:
        return packet_id in self._messages

    def __len__(self) -> int:
        return len(self._messages)

    def hold(self, packet_id: int, topic: str, data: bytes, retain: bool, *,
             timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._messages[packet_id] = (loop.time() + timeout, topic, data, retain)
        self._budget.add(weight(topic, data))
        if self._timer is None:
            self._timer = loop.call_later(timeout, self._expire)

    def held(self) -> list[tuple[int, float, str, bytes, bool]]:
        """(packet id, seconds left before it is discarded, topic, payload, retain) of each
        message, oldest first."""
        now = asyncio.get_running_loop().time()
        return [(packet_id, deadline - now, topic, data, retain)
                for packet_id, (deadline, topic, data, retain) in self._messages.items()]

    def release(self, packet_id: int) -> tuple[str, bytes, bool] | None:
        """The message *packet_id* (topic, payload, retain), now released; None if unknown."""
        held = self._messages.pop(packet_id, None)
        if held is None:
            return None
        _, topic, data, retain = held
        self._budget.remove(weight(topic, data))
        return topic, data, retain

    def clear(self) -> None:
        for _, topic, data, _retain in self._messages.values():
            self._budget.remove(weight(topic, data))
        self._messages.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for packet_id, (deadline, _, _, _) in list(self._messages.items()):
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            self.release(packet_id)


class Away:
    """Persistent sessions whose client is away, in the order they left; each is handed to
    *expire* once its client has been away for *after* seconds (``broker.session_expiry``).

    Every session gets the same time, so deadlines follow the order clients left: one
    timer, for the oldest, serves them all, and each sweep costs what it discards.
    """

    __slots__ = ("_after", "_expire", "_sessions", "_timer")

    def __init__(self, *, after: float, expire: Callable[[str, Session], None]) -> None:
        self._after = after
        self._expire = expire
        self._sessions: OrderedDict[str, tuple[float, Session]] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None

    def left(self, client_id: str, session: Session, *, away_for: float = 0.0) -> None:
        """The client of *session* went away (*away_for* seconds ago: a session restored
        after a restart; those are handed in longest away first): its session expires once
        the period has passed."""
        loop = asyncio.get_running_loop()
        self._sessions.pop(client_id, None)
        deadline = loop.time() + self._after - away_for
        self._sessions[client_id] = (deadline, session)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._sweep)

    def away_for(self, client_id: str) -> float:
        """Seconds since the client of *client_id* went away (0 if it is not away)."""
        held = self._sessions.get(client_id)
        if held is None:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - (held[0] - self._after))

    def back(self, client_id: str) -> None:
        """*client_id* connected again, or its session is gone: it no longer expires."""
        self._sessions.pop(client_id, None)

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._sessions:
            client_id, (deadline, session) = next(iter(self._sessions.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._sweep)
                return
            del self._sessions[client_id]
            self._expire(client_id, session)


class FleetSession(Session):  # type: ignore[misc]  # amqtt is untyped
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retained_messages: Mailbox[ApplicationMessage] = Mailbox()  # offline queue
        self.budget = Budget()
        self.unreleased = Unreleased(self.budget)

    def _init_states(self) -> None:
        self.transitions = SessionStates(self)

    def sent(self, message: OutgoingApplicationMessage) -> None:
        """The broker wrote *message* (QoS 1 or 2): held until acknowledged."""
        message.publish_packet = SENT
        self.inflight_out[message.packet_id] = message
        self.budget.add(weight(message.topic, message.data))

    def complete(self, packet_id: int) -> None:
        """The delivery *packet_id* is acknowledged (or given up): no longer held."""
        message = self.inflight_out.pop(packet_id, None)
        if message is not None:
            self.budget.remove(weight(message.topic, message.data))

    def queue(self, message: ApplicationMessage) -> None:
        """Keep *message* for this offline session (MQTT-3.1.2-5)."""
        self.retained_messages.put_nowait(message)
        self.budget.add(weight(message.topic, message.data))

    def dequeue(self) -> ApplicationMessage | None:
        """The oldest message queued while offline, no longer held; None when there is none."""
        if self.retained_messages.empty():
            return None
        message = self.retained_messages.get_nowait()
        self.budget.remove(weight(message.topic, message.data))
        return message

    def clear_queues(self) -> None:
        """The session is discarded: drop everything it holds, and its QoS 2 timer."""
        super().clear_queues()
        self.inflight_out.clear()
        self.unreleased.clear()
        self.budget.clear()


def outgoing(session: Session, packet_id: int) -> OutgoingApplicationMessage | None:
    """The broker's own in-flight delivery *packet_id* of *session*, if there is one."""
    message = session.inflight_out.get(packet_id)
    return message if message is not None and message.publish_packet is SENT else None


def install() -> None:
    """Make amqtt's CONNECT handling (``BrokerProtocolHandler.init_from_connect``) create
    :class:`FleetSession` objects."""
    broker_handler.Session = FleetSession
