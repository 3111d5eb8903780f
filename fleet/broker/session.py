"""amqtt sessions without a ``transitions`` state machine per client, and the state of the
QoS 1 and 2 deliveries the broker writes itself.

Stock ``amqtt.session.Session`` builds a ``transitions.Machine`` for every client: about
0.4 ms of CPU and 23 KiB per session, for three states. :class:`FleetSession` keeps the same
states and the same interface amqtt's broker uses (``state``, ``connect()``,
``disconnect()``, ``is_connected()``) as a plain attribute.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from amqtt.mqtt.protocol import broker_handler
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.session import OutgoingApplicationMessage, Session

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


class FleetSession(Session):  # type: ignore[misc]  # amqtt is untyped
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retained_messages: Mailbox[Any] = Mailbox()  # offline queue (MQTT-3.1.2-5)

    def _init_states(self) -> None:
        self.transitions = SessionStates(self)


def outgoing(session: Session, packet_id: int) -> OutgoingApplicationMessage | None:
    """The broker's own in-flight delivery *packet_id* of *session*, if there is one."""
    message = session.inflight_out.get(packet_id)
    return message if message is not None and message.publish_packet is SENT else None


def install() -> None:
    """Make amqtt's CONNECT handling (``BrokerProtocolHandler.init_from_connect``) create
    :class:`FleetSession` objects."""
    broker_handler.Session = FleetSession
