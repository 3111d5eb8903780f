"""Every place Fleet reaches into amqtt beyond its documented API, written for amqtt 0.12.1.

:func:`check_version` refuses to start the broker on any other release: what follows was read
in 0.12.1's source, is covered by the broker tests, and is promised by no amqtt release. The
rest of fleet.broker uses only this module's names and amqtt's documented API: ``Broker``
(one ``external`` listener, ``start``, ``shutdown``, ``sessions``, ``retained_messages``,
``subscriptions``), ``BaseAuthPlugin`` (fleet.broker.plugins), ``Action``, and the ``Session``
attributes plugins see (``client_id``, ``attributes``, ``will_*``, ``clean_session``).

Private, and why Fleet needs it:

- ``Broker._initialize_client_session``: the session of a connection is made or resumed by
  Fleet (:meth:`AmqttBroker.session_for`) from the CONNECT the gate parsed
  (fleet.broker.packets.Connect), and bound to the live connection the gate admitted. amqtt's
  ``BrokerProtocolHandler.init_from_connect`` is not called: amqtt never parses the CONNECT,
  so it cannot be understood two ways. Stock amqtt resumed any session of the client id, with
  its old TLS object (S1, S2, S6 in docs/broker-security.md), and kept its own keep-alive
  timer (S5).
- ``Broker._handle_client_session``: stock replays every retained message for every filter of
  every session (S3, and O(all filters)) and lets the handler retry deliveries for 5 s; here
  Fleet resends its own in-flight deliveries before anything new (MQTT-4.4.0-1), the CONNACK
  releases what the connection holds, and the connection's end is always handed to Fleet.
- ``Broker._handle_disconnect``: a connection whose session a newer one took over only stops.
- ``Broker._handle_subscription``, ``_handle_unsubscription``: once one has run (its SUBACK
  or UNSUBACK written), the connection's ConnectionReader handles the packets after it
  (``ConnectionReader.applied``; amqtt's protocol handler ``reader``).
- ``Broker._session_monitor``: not run (a scan of every session once a second); Fleet expires
  sessions itself (fleet.broker.session.Away).
- ``Broker._sessions``, ``_cleanup_session``, ``_retained_messages``, ``_subscriptions``: the
  session store, its clean-up, the retained messages, and the subscription table (Fleet's
  fleet.broker.subscriptions.SubscriptionTable in amqtt's place).
- ``Broker.add_subscription``, ``_del_subscription``, ``_del_all_subscriptions``,
  ``_publish_retained_messages_for_subscription``, ``retain_message``, ``_broadcast_message``:
  the calls amqtt's SUBSCRIBE, UNSUBSCRIBE, clean-up and will handling make, answered by Fleet's
  checks, quotas and routing (:class:`AmqttBroker`'s abstract methods). amqtt's own topic check
  (``Broker._topic_filtering``) sits only on paths this replaces (and the inbound queue that
  never yields, :class:`Inbound`), so no topic plugin is loaded.
- ``BrokerProtocolHandler``: ``start`` (the disconnect waiter exists before the reader, S8;
  its reader's two events are :class:`Flag` objects),
  its queues of pending SUBSCRIBE / UNSUBSCRIBE packets (a :class:`Mailbox` each), and
  ``_retry_deliveries`` (off: Fleet resends).
- ``Session``: ``_init_states`` (no ``transitions`` machine per client), ``inflight_out`` with
  ``OutgoingApplicationMessage`` (``publish_packet`` / ``pubrel_packet`` mark Fleet's own
  deliveries and their PUBREL), ``retained_messages`` (the offline queue),
  ``delivered_message_queue`` and ``clear_queues``.
- ``ReaderAdapter``: amqtt's protocol handler reads each packet with ``read(n)`` calls that never
  cross its end, which lets fleet.broker.connection.ConnectionReader take PUBLISH and the
  acknowledgements on its short path.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from importlib import metadata
from typing import Any, NamedTuple

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.errors import BrokerError, MQTTError, ProtocolHandlerError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.session import OutgoingApplicationMessage, Session

from fleet.broker.connection import Connection, ConnectionReader
from fleet.broker.packets import Connect
from fleet.broker.quotas import Budget, weight
from fleet.broker.session import Mailbox, Unreleased
from fleet.broker.subscriptions import SubscriptionTable
from fleet.errors import FleetError

AMQTT_VERSION = "0.12.1"
"""The amqtt release this module was written for and checked against."""

LISTENER = "default"
"""The one amqtt listener (type ``external``) the CONNECT gate feeds."""

_SENT = PublishPacket()
"""``publish_packet`` of an outgoing QoS 1/2 delivery the broker wrote itself (every one is:
amqtt's protocol handler only runs the inbound QoS 2 flow)."""

_RELEASED = PubrelPacket()
"""``pubrel_packet`` of an outgoing QoS 2 delivery once its PUBREC arrived and PUBREL went out."""

ReaderAdapter.register(ConnectionReader)


class AmqttVersionError(FleetError):
    """The installed amqtt is not the release fleet.broker was written for."""


def check_version(installed: str | None = None) -> None:
    """Refuse to run the broker on an amqtt release other than :data:`AMQTT_VERSION`
    (*installed*: the version to check, by default the installed distribution's)."""
    found = installed if installed is not None else metadata.version("amqtt")
    if found != AMQTT_VERSION:
        raise AmqttVersionError(
            f"amqtt {found} is installed, but Fleet's broker is written for amqtt "
            f"{AMQTT_VERSION} and relies on its internals (fleet.broker.amqtt_adapter): "
            f"install amqtt=={AMQTT_VERSION}", installed=found, expected=AMQTT_VERSION)


class Inflight(NamedTuple):
    """An outgoing QoS 1 or 2 delivery the client has not acknowledged yet."""

    packet_id: int
    topic: str
    data: bytes
    qos: int
    retain: bool
    released: bool
    """QoS 2: its PUBREC arrived and PUBREL went out; only PUBCOMP is awaited."""


class Inbound:
    """A session's inbound message "queue" (``delivered_message_queue``) that never holds
    anything.

    amqtt's protocol handler would put every received PUBLISH on this queue for the session's
    message loop to take out again. Every PUBLISH is read and routed by ConnectionReader
    instead, so the message loop only ever waits here, and there is no queue to bound: what
    is not yet routed is still unread, in the socket or the reader's bounded buffer.
    """

    __slots__ = ()

    async def get(self) -> Any:
        """Nothing is ever queued: the session's message loop waits here until cancelled."""
        await asyncio.get_running_loop().create_future()

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def full(self) -> bool:
        return False


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
    """An amqtt session without a ``transitions`` machine (stock builds one per client: about
    0.4 ms of CPU and 23 KiB, for three states), holding what Fleet's broker keeps for its
    client, each counted in its :class:`~fleet.broker.quotas.Budget`: the QoS 1 and 2
    deliveries the broker wrote itself, the messages queued while it is offline, and the
    inbound QoS 2 messages it has not released."""

    def __init__(self) -> None:
        super().__init__()
        self.retained_messages: Mailbox[RetainedApplicationMessage] = Mailbox()  # offline
        self.delivered_message_queue = Inbound()
        self.budget = Budget()
        self.unreleased = Unreleased(self.budget)

    @classmethod
    def connecting(cls, connect: Connect) -> FleetSession:
        """A new session for *connect* (``parent`` 0: CONNACK session present 0)."""
        session = cls()
        session.client_id = connect.client_id
        session.clean_session = connect.clean_session
        session._take(connect)
        return session

    def resume(self, connect: Connect) -> None:
        """*connect* resumes this session (``parent`` 1: CONNACK session present 1)."""
        self._take(connect)
        self.parent = 1

    def _take(self, connect: Connect) -> None:
        """The will and user name are those of the CONNECT that holds the session now."""
        self.will_flag = connect.will_topic is not None
        self.will_topic, self.will_message = connect.will_topic, connect.will_message
        self.will_qos, self.will_retain = connect.will_qos, connect.will_retain
        self.username = connect.username

    @classmethod
    def restored(cls, client_id: str) -> FleetSession:
        """A persistent session read back after a restart, its client away."""
        session = cls()
        session.client_id = client_id
        session.clean_session = False
        session.transitions.disconnect()
        return session

    def _init_states(self) -> None:
        self.transitions = SessionStates(self)

    @property
    def connected(self) -> bool:
        return bool(self.transitions.state == "connected")

    def disconnected(self) -> None:
        """Its connection is over (also when it failed before a DISCONNECT)."""
        if self.connected:
            self.transitions.disconnect()

    # -- deliveries the broker wrote (QoS 1 and 2) ---------------------------------------

    def sent(self, packet_id: int, topic: str, data: bytes | bytearray, qos: int, *,
             retain: bool, released: bool = False) -> None:
        """The broker wrote this delivery: held until acknowledged."""
        message = OutgoingApplicationMessage(packet_id, topic, qos, data, retain)
        message.publish_packet = _SENT
        if released:
            message.pubrel_packet = _RELEASED
        self.inflight_out[packet_id] = message
        self.budget.add(weight(topic, data))

    def inflight(self) -> list[Inflight]:
        """Every delivery the client has not acknowledged, oldest first."""
        return [Inflight(packet_id, message.topic, message.data, message.qos, message.retain,
                         message.pubrel_packet is _RELEASED)
                for packet_id, message in self.inflight_out.items()
                if message.publish_packet is _SENT]

    def pubrec(self, packet_id: int) -> None:
        """The PUBREC of *packet_id*: a QoS 2 delivery now waits for PUBCOMP only."""
        message = self._outgoing(packet_id)
        if message is not None and message.qos == 2:
            message.pubrel_packet = _RELEASED

    def acknowledged(self, packet_id: int, qos: int) -> None:
        """The PUBACK (*qos* 1) or PUBCOMP (*qos* 2) of *packet_id*: the delivery is over if
        it is one of that QoS."""
        message = self._outgoing(packet_id)
        if message is not None and message.qos == qos:
            self.complete(packet_id)

    def complete(self, packet_id: int) -> None:
        """The delivery *packet_id* is acknowledged (or given up): no longer held."""
        message = self.inflight_out.pop(packet_id, None)
        if message is not None:
            self.budget.remove(weight(message.topic, message.data))

    def _outgoing(self, packet_id: int) -> OutgoingApplicationMessage | None:
        message = self.inflight_out.get(packet_id)
        return message if message is not None and message.publish_packet is _SENT else None

    # -- the offline queue (MQTT-3.1.2-5) ------------------------------------------------

    def queue(self, topic: str, data: bytes | bytearray, qos: int) -> None:
        """Keep a message for this offline session."""
        self.retained_messages.put_nowait(RetainedApplicationMessage(None, topic, data, qos))
        self.budget.add(weight(topic, data))

    def dequeue(self) -> tuple[str, bytes | bytearray, int] | None:
        """The oldest message queued while offline (topic, payload, QoS), no longer held;
        None when there is none."""
        if self.retained_messages.empty():
            return None
        message = self.retained_messages.get_nowait()
        self.budget.remove(weight(message.topic, message.data))
        return message.topic, message.data, message.qos or 0

    def queued(self) -> list[tuple[str, bytes, int]]:
        """(topic, payload, QoS) of every message queued while offline, oldest first."""
        return [(message.topic, message.data, message.qos or 0)
                for message in self.retained_messages]

    def clear_queues(self) -> None:
        """The session is discarded: drop everything it holds, and its QoS 2 timer."""
        super().clear_queues()
        self.inflight_out.clear()
        self.unreleased.clear()
        self.budget.clear()


class ConnectionWriter(StreamWriterAdapter):  # type: ignore[misc]
    """amqtt's writer, carrying the connection it belongs to."""

    def __init__(self, writer: asyncio.StreamWriter, connection: Connection,
                 connect: Connect) -> None:
        super().__init__(writer)
        self.connection = connection
        self.connect: Connect | None = connect  # until the session is made from it


class Handler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's protocol handler for one connection, whose disconnect waiter exists before its
    reader starts.

    Stock 0.12.1 creates the waiter after starting the reader task. A connection reset in
    between (it reaches the broker while it writes the CONNACK) ends the reader first: its
    "connection closed" finds no waiter, and the waiter made afterwards is never resolved,
    so the connection's task waits for ever and keeps its client id (S8 in
    docs/broker-security.md). The reader's end now resolves this waiter, or, if it ended
    even before, leaves none, and ``wait_disconnect`` returns at once.
    """

    async def start(self) -> None:
        """``ProtocolHandler.start`` with a :class:`Flag` for each of its two events."""
        self._disconnect_waiter = asyncio.get_running_loop().create_future()
        if not self._is_attached():
            raise ProtocolHandlerError("Handler is not attached to a stream")
        self._reader_ready = Flag()
        self._reader_stopped = Flag()
        self._reader_task = asyncio.create_task(self._reader_loop())
        await self._reader_ready.wait()
        if self._loop is not None and self.keepalive_timeout is not None:
            self._keepalive_task = self._loop.call_later(self.keepalive_timeout,
                                                         self.handle_write_timeout)
        await self._retry_deliveries()


class Flag:
    """What amqtt's protocol handler uses of ``asyncio.Event`` (its reader's "ready" and
    "stopped", held for a connection's life): an Event allocates a deque of 760 bytes for
    its waiters; this keeps them in a list, made when one waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)
        return True


def _applied(handler: BrokerProtocolHandler) -> None:
    """A SUBSCRIBE or UNSUBSCRIBE *handler* read is applied: its reader goes on."""
    reader = handler.reader
    if isinstance(reader, ConnectionReader):
        reader.applied()


async def _next(loop: asyncio.AbstractEventLoop, disconnect: asyncio.Future[Any],
                *mailboxes: Mailbox[Any]) -> None:
    """Wait until *disconnect* is resolved or one of *mailboxes* gets an item."""
    wake: asyncio.Future[None] = loop.create_future()

    def resolved(_: asyncio.Future[Any]) -> None:
        if not wake.done():
            wake.set_result(None)

    disconnect.add_done_callback(resolved)
    for mailbox in mailboxes:
        mailbox.notify(wake)
    try:
        await wake
    finally:
        disconnect.remove_done_callback(resolved)
        for mailbox in mailboxes:
            mailbox.notify(None)


def _done(loop: asyncio.AbstractEventLoop, result: Any) -> asyncio.Future[Any]:
    """A future already resolved with *result* (amqtt's handlers take their waiter's)."""
    future: asyncio.Future[Any] = loop.create_future()
    future.set_result(result)
    return future


async def _nothing() -> None:
    """amqtt's per-connection retry of deliveries, which the broker does itself."""


class AmqttBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's Broker fed only by the CONNECT gate (listener type ``external``), whose private
    hooks call the abstract methods below, which Fleet's broker (fleet.broker.engine) answers.
    """

    def __init__(self, config: dict[str, Any],
                 subscriptions: SubscriptionTable[FleetSession]) -> None:
        super().__init__(config)
        self._subscriptions = subscriptions

    async def connected(self, reader: ConnectionReader, writer: asyncio.StreamWriter,
                        connection: Connection, connect: Connect) -> None:
        """Run the admitted *connection*, whose CONNECT the gate read (*connect*), in amqtt
        until it ends."""
        await self.external_connected(reader, ConnectionWriter(writer, connection, connect),
                                      LISTENER)

    # -- what Fleet's broker answers -----------------------------------------------------

    @abstractmethod
    async def session_for(self, connect: Connect) -> FleetSession:
        """The session *connect* creates or resumes."""

    @abstractmethod
    def claimed(self, session: FleetSession, connection: Connection,
                reader: ConnectionReader) -> None:
        """*connection* now holds *session*; *reader* reads its packets."""

    @abstractmethod
    def resend(self, session: FleetSession, connection: Connection) -> None:
        """Queue the deliveries *session* holds unacknowledged (sent after the CONNACK)."""

    @abstractmethod
    def deliver_queued(self, session: FleetSession) -> None:
        """Deliver what was queued for *session* while its client was away."""

    @abstractmethod
    async def left(self, session: FleetSession, connection: Connection | None) -> None:
        """The connection holding *session* is over."""

    @abstractmethod
    def subscribe(self, session: FleetSession, topic_filter: str, qos: int) -> int:
        """A SUBSCRIBE's filter: the SUBACK return code."""

    @abstractmethod
    def unsubscribe(self, session: FleetSession, topic_filter: str) -> bool:
        """An UNSUBSCRIBE's filter; whether *session* held it."""

    @abstractmethod
    def unsubscribe_all(self, session: FleetSession) -> None:
        """*session* is discarded: every filter it holds goes."""

    @abstractmethod
    def deliver_retained(self, session: FleetSession, topic_filter: str, qos: int) -> None:
        """Send the retained messages of a filter just granted."""

    @abstractmethod
    def retain(self, session: FleetSession | None, topic: str, data: bytes | bytearray,
               qos: int | None) -> None:
        """Keep (an empty payload: clear) the retained message of *topic* (a will)."""

    @abstractmethod
    def route(self, topic: str, data: bytes | bytearray, qos: int) -> None:
        """Deliver a message (a will) to every matching subscription."""

    # -- the store of sessions and retained messages -------------------------------------

    def stored(self, client_id: str) -> FleetSession | None:
        """The session stored under *client_id*, connected or not."""
        held = self._sessions.get(client_id)
        return held[0] if held is not None else None

    def stored_sessions(self) -> list[FleetSession]:
        return [stored for stored, _ in self._sessions.values()]

    def keep(self, session: FleetSession) -> None:
        """Store *session*, with no connection (one restored after a restart)."""
        self._sessions[session.client_id] = (session, None)

    async def discard(self, client_id: str) -> None:
        """Forget the session of *client_id*: its handler stops, its subscriptions go, and
        :meth:`FleetSession.clear_queues` drops what it held."""
        await self._cleanup_session(client_id)

    def keep_retained(self, session: FleetSession | None, topic: str, data: bytes | bytearray,
                      qos: int | None) -> None:
        self._retained_messages[topic] = RetainedApplicationMessage(session, topic, data, qos)

    def drop_retained(self, topic: str) -> None:
        self._retained_messages.pop(topic, None)

    def retained(self) -> list[tuple[str, bytes | bytearray, int]]:
        """(topic, payload, QoS) of every retained message."""
        return [(topic, message.data, message.qos or 0)
                for topic, message in self._retained_messages.items()]

    # -- amqtt's hooks -------------------------------------------------------------------

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int,
    ) -> tuple[BrokerProtocolHandler, FleetSession]:
        """Create or resume the session for the CONNECT the gate parsed."""
        connect = writer.connect if isinstance(writer, ConnectionWriter) else None
        if connect is None or not isinstance(reader, ConnectionReader) \
                or writer.connection.client_id != connect.client_id:
            await writer.close()
            raise MQTTError("connection did not pass the CONNECT gate")
        writer.connect = None
        connection = writer.connection
        handler = Handler(self.plugins_manager)
        handler._pending_subscriptions = Mailbox()
        handler._pending_unsubscriptions = Mailbox()
        session = await self.session_for(connect)
        # The session now belongs to this live connection, never to what a former one left.
        session.ssl_object = writer.get_ssl_info()
        session.remote_address, session.remote_port = remote_address, remote_port
        session.keep_alive = 0  # the connection enforces 1.5 x keep-alive itself
        self.claimed(session, connection, reader)
        return handler, session

    async def _handle_client_session(self, reader: Any, writer: Any,
                                     client_session: FleetSession,
                                     handler: BrokerProtocolHandler, server: Any,
                                     listener_name: str) -> None:
        """Stock flow without its O(all filters) retained replay of other sessions' filters."""
        authenticated = await self._authenticate(client_session,
                                                 self.listeners_config[listener_name])
        client_id = client_session.client_id
        if client_id is None:
            raise BrokerError("client id was not set")
        previous = self._sessions.get(client_id)
        if client_session.connected and previous is not None:
            # The gate has already dropped the previous holder; finish its handler.
            await previous[1].handle_connection_closed()
            await previous[1].stop()
        else:
            client_session.transitions.connect()
        connection = writer.connection if isinstance(writer, ConnectionWriter) else None
        try:
            handler.attach(client_session, reader, writer)
            # The broker resends its own deliveries; inbound QoS 2 messages wait in the
            # session for the client's PUBREL: amqtt has nothing to retry.
            handler._retry_deliveries = _nothing
            if connection is not None and authenticated:  # queued now, sent after the CONNACK
                self.resend(client_session, connection)
            self._sessions[client_id] = (client_session, handler)
            await handler.mqtt_connack_authorize(authenticated)
            if not authenticated:
                client_session.transitions.disconnect()
                await writer.close()
                return
            if connection is not None:
                connection.acknowledged()
            await handler.start()
            # Messages queued while a persistent session was offline. Retained messages are
            # sent when a subscription is made (MQTT-3.3.1-6), not again on every reconnect.
            self.deliver_queued(client_session)
            await self._client_message_loop(client_session, handler)
        finally:
            await self.left(client_session, connection)

    async def _handle_disconnect(self, client_session: FleetSession,
                                 handler: BrokerProtocolHandler,
                                 disconnect_waiter: asyncio.Future[Any]) -> None:
        """A connection's end. If a newer connection has taken its session over meanwhile
        (the gate stopped waiting for this one after ``connect_timeout``), the session, its
        state and the will it now holds are the newer connection's: this one only stops."""
        held = self._sessions.get(client_session.client_id)
        if held is not None and held[0] is client_session and held[1] is not handler:
            await self._stop_handler(handler)
        else:
            await super()._handle_disconnect(client_session, handler, disconnect_waiter)

    async def _client_message_loop(self, client_session: FleetSession,
                                   handler: BrokerProtocolHandler) -> None:
        """Stock's loop without its four tasks per connection (a disconnect waiter, one per
        SUBSCRIBE / UNSUBSCRIBE queue, and one for the inbound message queue, which never
        yields here: :class:`Inbound`) and the ``asyncio.wait`` over them, which an idle
        connection holds for its whole life. The connection's own task waits on one future,
        resolved when its disconnect waiter is or a SUBSCRIBE or UNSUBSCRIBE is queued, and
        handles them in stock's order: the disconnect, then one SUBSCRIBE, then one
        UNSUBSCRIBE per wake-up."""
        subscriptions = handler._pending_subscriptions
        unsubscriptions = handler._pending_unsubscriptions
        if not isinstance(subscriptions, Mailbox) or not isinstance(unsubscriptions, Mailbox):
            raise BrokerError("handler was not made by _initialize_client_session")
        loop = asyncio.get_running_loop()
        disconnect: asyncio.Future[Any] | None = handler._disconnect_waiter
        if disconnect is None:  # the connection ended before the loop (wait_disconnect)
            disconnect = loop.create_future()
            disconnect.set_result(None)
        connected = True
        try:
            while connected:
                if not disconnect.done() and subscriptions.empty() \
                        and unsubscriptions.empty():
                    await _next(loop, disconnect, subscriptions, unsubscriptions)
                if disconnect.done():
                    await self._handle_disconnect(client_session, handler, disconnect)
                    connected = False
                for mailbox, handle in ((subscriptions, self._handle_subscription),
                                        (unsubscriptions, self._handle_unsubscription)):
                    if not mailbox.empty():
                        try:
                            await handle(client_session, handler,
                                         _done(loop, mailbox.get_nowait()))
                        finally:  # its SUBACK / UNSUBACK is written: the reader goes on
                            _applied(handler)
        except asyncio.CancelledError:  # as stock: the loop ends, the connection's task goes on
            pass

    async def _session_monitor(self) -> None:
        """amqtt's once-a-second scan of every session is not run: Fleet's broker discards a
        clean session when its connection ends and expires persistent ones itself."""

    async def add_subscription(self, subscription: tuple[str, int],
                               session: FleetSession) -> int:
        topic_filter, qos = subscription
        return self.subscribe(session, topic_filter, qos)

    def _del_subscription(self, a_filter: str, session: FleetSession) -> int:
        return int(self.unsubscribe(session, a_filter))

    async def _del_all_subscriptions(self, session: FleetSession) -> None:
        self.unsubscribe_all(session)

    async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: FleetSession) -> None:
        topic_filter, qos = subscription
        self.deliver_retained(session, topic_filter, qos)

    async def retain_message(self, source_session: FleetSession | None,
                             topic_name: str | None, data: bytes | bytearray | None,
                             qos: int | None = None) -> None:
        """A retained will."""
        if topic_name is not None:
            self.retain(source_session, topic_name, data or b"", qos)

    async def _broadcast_message(self, session: FleetSession | None, topic: str | None,
                                 data: bytes | bytearray | None,
                                 force_qos: int | None = None) -> None:
        """Wills and broker-internal messages: routed at once like client messages."""
        if topic is not None and data is not None:
            self.route(topic, data, 2 if force_qos is None else force_qos)
