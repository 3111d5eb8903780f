"""amqtt's Broker with the session binding, delivery checks and bounds Fleet needs.

What changes against stock amqtt 0.12.1 (S1-S7 are listed in docs/broker-security.md):

- every session is bound to the live connection that passed the CONNECT gate; a session can
  only be created or resumed by a connection whose certificate identity equals its client id
  (S1, S2, S6), and amqtt's own keep-alive timer is replaced by the connection's (S5);
- retained messages go only to the session that subscribed, and only if it may receive the
  topic (S3); every delivery, live or queued for an offline session, passes the RECEIVE check;
- a message is routed as soon as it is read (no per-session or global queue), delivered at
  min(publish QoS, subscription QoS), and each client's backlog is bounded: QoS 0 packets that
  would exceed ``max_queued_messages`` unflushed packets, QoS 1/2 deliveries beyond that many
  unacknowledged ones, and messages queued for an offline session beyond that many are dropped;
- QoS 0 and 1 PUBLISH packets and the acknowledgements of outgoing deliveries (PUBACK,
  PUBREC, PUBCOMP) take a short path: ConnectionReader parses them and calls
  :meth:`FleetBroker.receive`; every QoS 1 and 2 delivery is written here and tracked in the
  session's ``inflight_out``. Everything else, the inbound QoS 2 flow included, goes through
  amqtt's protocol handler;
- a QoS 1 delivery stays in ``inflight_out`` until its PUBACK arrives, a QoS 2 delivery until
  its PUBCOMP, across connections: when a persistent session resumes, an unacknowledged
  PUBLISH is sent again, DUP set and with the same packet identifier, and a PUBREL whose
  PUBCOMP is missing is sent again, before anything new (MQTT-4.4.0-1). amqtt's own retry,
  which gives up after 5 s or when the connection ends, is left only the inbound QoS 2 flows.
  Messages queued for an offline session are delivered the same way, not retained;
- topic checks call the policy plugin directly instead of through a task per plugin;
- subscriptions live in a table indexed by topic level (fleet.broker.subscriptions): a
  SUBSCRIBE, an UNSUBSCRIBE and the routing of a message cost the same with 10 sessions or
  10,000, and a repeated SUBSCRIBE replaces the subscription's QoS (MQTT-3.8.4-3);
- sessions keep their state without a ``transitions`` machine each (fleet.broker.session).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.errors import BrokerError, MQTTError
from amqtt.events import BrokerEvents
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import ApplicationMessage, OutgoingApplicationMessage, Session

from fleet.acl import is_topic_filter, is_topic_name, matches
from fleet.broker import packets, session
from fleet.broker.connection import Connection, ConnectionWriter, connection_of
from fleet.broker.plugins import TopicPolicyPlugin
from fleet.broker.session import RELEASED, SENT, Mailbox
from fleet.broker.subscriptions import SubscriptionTable

FILTERS_KEY = "fleet.filters"
"""Under ``Session.attributes``: the filters this session holds (a set)."""

SUBACK_FAILURE = 0x80

Denied = Callable[[Connection | None, Action, str], None]
Receive = Callable[[Session, str, bytes, int, bool], None]


class Inbound:
    """A session's inbound message "queue" that hands each PUBLISH on as it is put.

    amqtt's protocol handler puts every received PUBLISH here and the session's message loop
    takes it out again: two task switches and an ``asyncio.wait`` per message. Routing at
    ``put`` keeps the order (the handler puts messages in arrival order) and needs no queue
    bound: what is not yet routed is what is still unread in the socket. (QoS 0 and 1
    PUBLISH packets do not even reach amqtt's handler: see ConnectionReader.)
    """

    __slots__ = ("_receive", "_session")

    def __init__(self, session: Session, receive: Receive) -> None:
        self._session = session
        self._receive = receive

    def put_nowait(self, item: Any) -> None:
        packet = item.publish_packet
        self._receive(self._session, item.topic, item.data, item.qos or 0,
                      bool(packet is not None and packet.retain_flag))

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    async def get(self) -> Any:
        """Nothing is ever queued: the session's message loop waits here until cancelled."""
        await asyncio.get_running_loop().create_future()

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def full(self) -> bool:
        return False


class FleetBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt Broker fed only by the CONNECT gate (listener type ``external``)."""

    def __init__(self, config: dict[str, Any], *, max_queued_messages: int,
                 on_denied: Denied) -> None:
        session.install()
        super().__init__(config)
        plugins = [p for p in self.plugins_manager.plugins if isinstance(p, TopicPolicyPlugin)]
        if len(plugins) != 1 or len(self.plugins_manager._topic_plugins) != 1:
            raise BrokerError("FleetBroker needs exactly one topic plugin: TopicPolicyPlugin")
        self._policy = plugins[0]
        self._max_queued = max_queued_messages
        self._on_denied = on_denied
        self._subscriptions: SubscriptionTable[Session] = SubscriptionTable()
        self._notifications: set[asyncio.Future[None]] = set()
        self._listened = {event for event in BrokerEvents if any(
            hasattr(plugin, f"on_{event}") for plugin in self.plugins_manager.plugins)}

    # -- sessions ------------------------------------------------------------------------

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        handler, session = await super()._initialize_client_session(
            reader, writer, remote_address, remote_port)
        handler._pending_subscriptions = Mailbox()
        handler._pending_unsubscriptions = Mailbox()
        connection = writer.connection if isinstance(writer, ConnectionWriter) else None
        if connection is None or connection.client_id != session.client_id:
            await writer.close()
            raise MQTTError("connection did not pass the CONNECT gate")
        # The session now belongs to this live connection, never to what a former one left.
        session.ssl_object = writer.get_ssl_info()
        session.remote_address, session.remote_port = remote_address, remote_port
        session.keep_alive = 0  # the connection enforces 1.5 x keep-alive itself
        if not isinstance(session.delivered_message_queue, Inbound):
            session.delivered_message_queue = Inbound(session, self.receive)
        if session.parent == 0:
            session.attributes[FILTERS_KEY] = set()
        connection.bind(session)
        return handler, session

    async def _handle_client_session(self, reader: Any, writer: Any, client_session: Session,
                                     handler: BrokerProtocolHandler, server: Any,
                                     listener_name: str) -> None:
        """Stock flow without its O(all filters) retained replay of other sessions' filters."""
        authenticated = await self._authenticate(client_session,
                                                 self.listeners_config[listener_name])
        client_id = client_session.client_id
        if client_id is None:
            raise BrokerError("client id was not set")
        previous = self._sessions.get(client_id)
        if client_session.transitions.is_connected() and previous is not None:
            # The gate has already dropped the previous holder; finish its handler.
            await previous[1].handle_connection_closed()
            await previous[1].stop()
        else:
            client_session.transitions.connect()
        handler.attach(client_session, reader, writer)
        handler._retry_deliveries = functools.partial(_retry_inbound_qos2, handler)
        connection = writer.connection if isinstance(writer, ConnectionWriter) else None
        if connection is not None and authenticated:  # queued now, written after the CONNACK
            self._resend_inflight(client_session, connection)
        self._sessions[client_id] = (client_session, handler)
        await handler.mqtt_connack_authorize(authenticated)
        if not authenticated:
            client_session.transitions.disconnect()
            await writer.close()
            return
        if connection is not None:
            connection.acknowledged()
        await self.plugins_manager.fire_event(BrokerEvents.CLIENT_CONNECTED, client_id=client_id,
                                              client_session=client_session)
        await handler.start()
        # Messages queued while a persistent session was offline. Retained messages are sent
        # when a subscription is made (MQTT-3.3.1-6), not again on every reconnect.
        await self._publish_session_retained_messages(client_session)
        await self._client_message_loop(client_session, handler)

    async def purge_session(self, client_id: str) -> None:
        """Forget a session entirely: subscriptions, queued and in-flight messages, state."""
        stored = self._sessions.get(client_id)
        await self._cleanup_session(client_id)
        if stored is not None:
            stored[0].inflight_out.clear()

    def _resend_inflight(self, session: Session, connection: Connection) -> None:
        """Send unacknowledged PUBLISH (DUP set) and PUBREL packets again, in order
        (MQTT-4.4.0-1)."""
        for packet_id, message in list(session.inflight_out.items()):
            if message.publish_packet is not SENT:
                continue
            if message.pubrel_packet is RELEASED:
                connection.write(packets.pubrel(packet_id))
            elif not connection.may_receive(message.topic):
                del session.inflight_out[packet_id]
            else:
                connection.write(packets.publish(message.topic, message.data, qos=message.qos,
                                                 packet_id=packet_id, retain=message.retain,
                                                 dup=True))

    async def _publish_session_retained_messages(self, session: Session) -> None:
        """Messages queued while the session was offline, delivered like live ones."""
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            self._deliver(session, queued.topic, queued.data, queued.qos or 0, retain=False)

    # -- subscriptions -------------------------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """Grant *subscription* (filter, QoS) or refuse it; returns the SUBACK return code."""
        topic_filter, qos = subscription
        if not is_topic_filter(topic_filter):  # MQTT-4.7.1-2, MQTT-4.7.1-3
            return SUBACK_FAILURE
        if not self._allowed(session, topic_filter, Action.SUBSCRIBE):
            return SUBACK_FAILURE
        self._subscriptions.subscribe(topic_filter, session.client_id, session, qos)
        session.attributes.setdefault(FILTERS_KEY, set()).add(topic_filter)
        return qos

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        session.attributes.get(FILTERS_KEY, set()).discard(a_filter)
        return int(self._subscriptions.unsubscribe(a_filter, session.client_id))

    async def _del_all_subscriptions(self, session: Session) -> None:
        # Only this session's own filters, instead of scanning every filter in the broker.
        for topic_filter in list(session.attributes.get(FILTERS_KEY, ())):
            self._del_subscription(topic_filter, session)

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        return self._allowed(session, topic, action)

    def _allowed(self, session: Session, topic: str, action: Action) -> bool:
        allowed = self._policy.allows(session, topic, action)
        if not allowed and action is not Action.RECEIVE:
            self._on_denied(connection_of(session), action, topic)
        return allowed

    def _notify(self, event: BrokerEvents, **details: Any) -> None:
        """Fire an amqtt plugin event, if any plugin listens to it."""
        if event in self._listened:
            task = asyncio.ensure_future(self.plugins_manager.fire_event(event, **details))
            self._notifications.add(task)
            task.add_done_callback(self._notifications.discard)

    # -- messages ------------------------------------------------------------------------

    def receive(self, session: Session, topic: str, data: bytes, qos: int,
                retain: bool) -> None:
        """A PUBLISH from *session*: check it, route it, keep it if retained."""
        if self._listened:
            message = ApplicationMessage(None, topic, qos, data, retain)
            self._notify(BrokerEvents.MESSAGE_RECEIVED, client_id=session.client_id,
                         message=message)
        connection = connection_of(session)
        if connection is None or not connection.may_publish(topic) or topic[0] == "$":
            if not is_topic_name(topic):  # MQTT-4.7.3-1, MQTT-3.3.2-2: close the connection
                if connection is not None:
                    connection.abort(f"PUBLISH to the invalid topic name {topic!r}")
            else:
                self._on_denied(connection, Action.PUBLISH, topic)
            return  # a refused PUBLISH is dropped
        if self._listened:
            self._notify(BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id,
                         message=message)
        self.route(topic, data, qos)
        if retain:
            self._retain(session, topic, data, qos)

    def _retain(self, session: Session | None, topic: str, data: bytes | bytearray,
                qos: int | None) -> None:
        """Keep (or, for an empty payload, clear) the retained message of *topic*."""
        if data:
            retained = RetainedApplicationMessage(session, topic, data, qos)
            self._retained_messages[topic] = retained
        else:  # MQTT-3.3.1-10
            retained = self._retained_messages.pop(topic, None)
        if retained is not None:
            self._notify(BrokerEvents.RETAINED_MESSAGE, client_id=None,
                         retained_message=retained)

    async def _handle_message_delivery(self, client_session: Session,
                                       handler: BrokerProtocolHandler,
                                       wait_deliver: asyncio.Future[Any]) -> bool:
        """Messages put on a session queue other than :class:`Inbound` get the same checks."""
        message = wait_deliver.result()
        if message is not None:
            packet = message.publish_packet
            self.receive(client_session, message.topic, message.data, message.qos or 0,
                         bool(packet is not None and packet.retain_flag))
        return True

    async def _broadcast_message(self, session: Session | None, topic: str | None,
                                 data: bytes | bytearray | None,
                                 force_qos: int | None = None) -> None:
        """Wills and broker-internal messages: routed at once like client messages."""
        if topic is not None and data is not None:
            self.route(topic, data, 2 if force_qos is None else force_qos)

    def route(self, topic: str, data: bytes | bytearray, qos: int) -> None:
        """Deliver a message to every subscription matching *topic*."""
        table = self._subscriptions
        for topic_filter in table.matching(topic):
            for target, granted in table[topic_filter]:
                self._deliver(target, topic, data, min(qos, granted), retain=False)

    def _deliver(self, target: Session, topic: str, data: bytes | bytearray, qos: int, *,
                 retain: bool) -> None:
        connection = connection_of(target)
        if connection is None or not connection.may_receive(topic):
            return
        if target.transitions.state != "connected":
            # MQTT-3.1.2-5: kept for a disconnected persistent session, QoS 1 and 2 only.
            if not target.clean_session and qos > 0 and len(target.inflight_out) \
                    + target.retained_messages.qsize() < self._max_queued:
                target.retained_messages.put_nowait(
                    RetainedApplicationMessage(None, topic, data, qos))
            return
        if qos == 0:
            connection.send(packets.publish(topic, data, retain=retain), limit=self._max_queued)
            return
        if len(target.inflight_out) >= self._max_queued:
            connection.dropped += 1
            return
        # Written here; ConnectionReader takes the PUBACK / PUBREC / PUBCOMP (4.3.2, 4.3.3).
        packet_id = target.next_packet_id
        message = OutgoingApplicationMessage(packet_id, topic, qos, data, retain)
        message.publish_packet = SENT
        target.inflight_out[packet_id] = message
        connection.write(
            packets.publish(topic, data, qos=qos, packet_id=packet_id, retain=retain))

    async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Session) -> None:
        topic_filter, qos = subscription
        if topic_filter not in session.attributes.get(FILTERS_KEY, ()):
            return
        for topic, retained in list(self._retained_messages.items()):
            if matches(topic, topic_filter):
                self._deliver(session, topic, retained.data, min(qos, retained.qos or 0),
                              retain=True)


async def _retry_inbound_qos2(handler: BrokerProtocolHandler) -> None:
    """amqtt's resume of the inbound QoS 2 flows its handler runs (waiting for PUBREL)."""
    flows = list(handler.session.inflight_in.values())
    if flows:
        await asyncio.wait([asyncio.ensure_future(
            asyncio.wait_for(handler._handle_message_flow(message), 10)) for message in flows])
