"""Fleet's broker: sessions bound to the live connection, routing, delivery checks and bounds,
on amqtt (whose internals it reaches only through fleet.broker.amqtt_adapter).

What changes against stock amqtt 0.12.1 (S1-S8 are listed in docs/broker-security.md):

- every session is bound to the live connection that passed the CONNECT gate; a session can
  only be created or resumed by a connection whose certificate identity equals its client id
  (S1, S2, S6), and amqtt's own keep-alive timer is replaced by the connection's (S5);
- a connection's end is always seen, even when it comes before its reader has started
  (fleet.broker.amqtt_adapter.Handler, S8); only a persistent session is resumed, never the
  clean session of a connection still being torn down (MQTT-3.1.2-6); and a connection whose
  session a newer one took over leaves that session, its state and its will alone;
- retained messages go only to the session that subscribed, and only if it may receive the
  topic (S3); every delivery, live or queued for an offline session, passes the RECEIVE check;
- a message is routed as soon as it is read (no per-session or global queue), delivered at
  min(publish QoS, subscription QoS), and each client has one queue budget
  (``max_queued_messages`` / ``max_queued_bytes``, fleet.broker.quotas) shared by what it
  holds (QoS 1/2 deliveries not yet acknowledged, messages queued while it is offline,
  inbound QoS 2 messages it has not released) and the QoS 0 deliveries not yet flushed to
  its socket; a message beyond it is dropped;
- every PUBLISH, PUBREL and acknowledgement of an outgoing delivery (PUBACK, PUBREC,
  PUBCOMP) takes a short path: ConnectionReader parses it and calls :meth:`receive`,
  :meth:`hold` or :meth:`release`; an inbound QoS 2 message waits in the session until its
  PUBREL or ``qos2_release_timeout``, across connections. Every QoS 1 and 2 delivery is
  written here and held by the session (``FleetSession.sent``). SUBSCRIBE, UNSUBSCRIBE,
  PINGREQ and DISCONNECT go through amqtt's protocol handler;
- a QoS 1 delivery is held until its PUBACK arrives, a QoS 2 delivery until
  its PUBCOMP, across connections: when a persistent session resumes, an unacknowledged
  PUBLISH is sent again, DUP set and with the same packet identifier, and a PUBREL whose
  PUBCOMP is missing is sent again, before anything new (MQTT-4.4.0-1). amqtt's own retry,
  which gives up after 5 s or when the connection ends, is not used. Messages queued for an
  offline session are delivered the same way, not retained;
- quotas (fleet.broker.quotas): a session holds at most ``max_subscriptions`` filters
  (SUBACK 0x80 beyond); a device's retained messages, wills included, are held to
  ``max_retained_messages`` / ``max_retained_bytes`` (beyond: routed, not retained); each
  refusal episode is reported once to ``on_quota``;
- every topic check is the live connection's (its grants, fleet.acl), called directly: no
  amqtt topic plugin is loaded, and amqtt's own check (``Broker._topic_filtering``) sits only
  on paths this class replaces (SUBSCRIBE, routing, the inbound queue that never yields);
- subscriptions live in a table indexed by topic level (fleet.broker.subscriptions): a
  SUBSCRIBE, an UNSUBSCRIBE and the routing of a message cost the same with 10 sessions or
  10,000, and a repeated SUBSCRIBE replaces the subscription's QoS (MQTT-3.8.4-3);
- sessions keep their state without a ``transitions`` machine each
  (fleet.broker.amqtt_adapter.FleetSession);
  a clean session is discarded when its connection ends, a persistent one once its client
  has been away for ``session_expiry`` (fleet.broker.session.Away), instead of amqtt's scan
  of every session once a second;
- the revocation watcher purges a session (:meth:`FleetBroker.purge_session`) and the
  retained messages a device set (:meth:`FleetBroker.purge_retained`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from amqtt.contexts import Action

from fleet.acl import matches
from fleet.broker import packets
from fleet.broker.amqtt_adapter import AmqttBroker, FleetSession
from fleet.broker.connection import Connection, ConnectionReader, connection_of
from fleet.broker.health import BrokerMetrics
from fleet.broker.packets import Connect
from fleet.broker.quotas import (
    MAX_FILTER_BYTES,
    MAX_FILTER_LEVELS,
    QUEUE,
    SUBSCRIPTIONS,
    OnQuota,
    Quotas,
    RetainedLedger,
    weight,
)
from fleet.broker.session import Away
from fleet.broker.subscriptions import SubscriptionTable

FILTERS_KEY = "fleet.filters"
"""Under ``Session.attributes``: the filters this session holds (a set)."""

SUBACK_FAILURE = 0x80

log = logging.getLogger(__name__)

Denied = Callable[[Connection | None, Action, str], None]


class FleetBroker(AmqttBroker):
    """The broker the CONNECT gate feeds."""

    def __init__(self, config: dict[str, Any], *, quotas: Quotas, session_expiry: float,
                 on_denied: Denied, on_quota: OnQuota,
                 metrics: BrokerMetrics | None = None) -> None:
        self._table: SubscriptionTable[FleetSession] = SubscriptionTable()
        super().__init__(config, self._table)
        self.quotas = quotas
        self._on_denied = on_denied
        self._on_quota = on_quota
        metrics = metrics or BrokerMetrics()
        self._received, self._delivered = metrics.received, metrics.delivered
        self._dropped = metrics.dropped_queue_full
        self._retained = RetainedLedger(max_messages=quotas.max_retained_messages,
                                        max_bytes=quotas.max_retained_bytes)
        self.session_expiry = session_expiry
        self._away = Away(after=session_expiry, expire=self._expired)
        self._tasks: set[asyncio.Future[None]] = set()

    # -- sessions ------------------------------------------------------------------------

    async def session_for(self, connect: Connect) -> FleetSession:
        """The stored persistent session of *connect*'s client id, resumed with the new
        CONNECT's will (``parent`` 1: CONNACK session present); otherwise a new session, with
        any stored session of that client id discarded.

        A clean session lasts only as long as its connection (MQTT-3.1.2-6): one still stored
        belongs to a connection not yet torn down, and is never resumed, whatever the new
        CONNECT asks for (stock amqtt resumed it, clean_session flag and all, so the session
        was discarded again when the resuming connection ended).
        """
        client_id = connect.client_id
        stored = self.stored(client_id)
        if stored is None or connect.clean_session or stored.clean_session:
            if stored is not None:
                await self.discard(client_id)
            return FleetSession.connecting(connect)
        stored.resume(connect)
        return stored

    def claimed(self, session: FleetSession, connection: Connection,
                reader: ConnectionReader) -> None:
        if session.parent == 0:
            session.attributes[FILTERS_KEY] = set()
        self._away.back(session.client_id)  # claimed now: an expiry may not take it any more
        connection.bind(session)
        reader.receiver = self

    async def left(self, session: FleetSession, connection: Connection | None) -> None:
        """The connection holding *session* is over: a clean session is discarded now
        (MQTT-3.1.2-6), a persistent one once its client stays away for ``session_expiry``."""
        client_id = session.client_id
        if connection_of(session) is not connection or self.stored(client_id) is not session:
            return  # resumed by a newer connection, or purged
        session.disconnected()  # also when the connection failed before its DISCONNECT
        if session.clean_session:
            await self.discard(client_id)
        else:
            self._away.left(client_id, session)

    def _expired(self, client_id: str, session: FleetSession) -> None:
        if self.stored(client_id) is session:
            log.info("session %r expired: its client was away for broker.session_expiry",
                     client_id)
            self._spawn(self.purge_session(client_id))

    async def purge_session(self, client_id: str) -> int | None:
        """Forget a session entirely: subscriptions, queued and in-flight messages, will,
        state. Returns how many messages it held (None: there was no session)."""
        stored = self.stored(client_id)
        if stored is None:
            return None
        held = stored.budget.messages
        self._away.back(client_id)
        await self.discard(client_id)
        return held

    # -- what survives a restart (fleet.broker.persistence) ------------------------------

    def persistent_sessions(self) -> list[FleetSession]:
        """Every stored session that outlives its connection (clean_session=0)."""
        return [stored for stored in self.stored_sessions() if not stored.clean_session]

    def subscriptions_of(self, session: FleetSession) -> list[tuple[str, int]]:
        """(filter, granted QoS) of every subscription *session* holds."""
        table, client_id = self._table, session.client_id
        return [(topic_filter, granted)
                for topic_filter in sorted(session.attributes.get(FILTERS_KEY, ()))
                if (granted := table[topic_filter].granted(client_id)) is not None]

    def away_for(self, client_id: str) -> float:
        """Seconds since the client of a stored session went away (0: it is connected)."""
        return self._away.away_for(client_id)

    def retained_with_owners(self) -> list[tuple[str, bytes, int, str | None]]:
        """(topic, payload, QoS, device charged with it) of every retained message."""
        owner = self._retained.owner
        return [(topic, bytes(data), qos, owner(topic)) for topic, data, qos in self.retained()]

    def adopt(self, session: FleetSession, subscriptions: list[tuple[str, int]], *,
              away_for: float) -> int:
        """Take in a persistent session restored after a restart, its client away for
        *away_for* seconds, with those of its *subscriptions* (valid filters) that pass the
        checks of a SUBSCRIBE: the topic policy of its last connection, ``max_subscriptions``
        and the filter bounds. Returns how many did not."""
        client_id = session.client_id
        connection = connection_of(session)
        assert connection is not None, "a restored session is bound to its last connection"
        filters: set[str] = set()
        session.attributes[FILTERS_KEY] = filters
        refused = 0
        for topic_filter, qos in subscriptions:
            if not connection.grants.may_subscribe(topic_filter) \
                    or self._subscription_problem(topic_filter, len(filters)) is not None:
                refused += 1
                continue
            self._table.subscribe(topic_filter, client_id, session, qos)
            filters.add(topic_filter)
        self.keep(session)  # no handler until a client connects
        self._away.left(client_id, session, away_for=away_for)
        return refused

    def restore_retained(self, topic: str, data: bytes, qos: int, owner: str | None) -> bool:
        """Take in a retained message restored after a restart, within the retained quota
        of the device charged with it; False if it does not fit."""
        size = weight(topic, data)
        if not data or self._retained.refusal(owner, topic, size) is not None:
            return False
        self._retained.set(owner, topic, size)
        self.keep_retained(None, topic, data, qos)
        return True

    def resend(self, session: FleetSession, connection: Connection) -> None:
        """Send unacknowledged PUBLISH (DUP set) and PUBREL packets again, in order
        (MQTT-4.4.0-1)."""
        for flight in session.inflight():
            if flight.released:
                connection.write(packets.pubrel(flight.packet_id))
            elif not connection.may_receive(flight.topic):
                session.complete(flight.packet_id)
            else:
                connection.write(packets.publish(flight.topic, flight.data, qos=flight.qos,
                                                 packet_id=flight.packet_id,
                                                 retain=flight.retain, dup=True))

    def deliver_queued(self, session: FleetSession) -> None:
        """Messages queued while the session was offline, delivered like live ones."""
        while (queued := session.dequeue()) is not None:
            topic, data, qos = queued
            self._deliver(session, topic, data, qos, retain=False)

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(self, session: FleetSession, topic_filter: str, qos: int) -> int:
        """Grant *topic_filter* at *qos* or refuse it; returns the SUBACK return code."""
        if not self._may_subscribe(session, topic_filter):
            return SUBACK_FAILURE
        filters = session.attributes.setdefault(FILTERS_KEY, set())
        if topic_filter not in filters:
            problem = self._subscription_problem(topic_filter, len(filters))
            if problem is not None:
                if session.budget.begins(SUBSCRIPTIONS):
                    self._on_quota(connection_of(session), "max_subscriptions", problem)
                return SUBACK_FAILURE
            session.budget.ends(SUBSCRIPTIONS)
        self._table.subscribe(topic_filter, session.client_id, session, qos)
        filters.add(topic_filter)
        return qos

    def _subscription_problem(self, topic_filter: str, held: int) -> str | None:
        """Why a session holding *held* filters may not add *topic_filter*, or None."""
        if held >= self.quotas.max_subscriptions:
            return f"already holds {held} subscriptions, refused {topic_filter[:100]!r}"
        if len(topic_filter) > MAX_FILTER_BYTES \
                or topic_filter.count("/") >= MAX_FILTER_LEVELS:
            return (f"filter of {len(topic_filter)} characters, {topic_filter.count('/') + 1}"
                    f" levels: at most {MAX_FILTER_BYTES} and {MAX_FILTER_LEVELS}")
        return None

    def unsubscribe(self, session: FleetSession, topic_filter: str) -> bool:
        session.attributes.get(FILTERS_KEY, set()).discard(topic_filter)
        return self._table.unsubscribe(topic_filter, session.client_id)

    def unsubscribe_all(self, session: FleetSession) -> None:
        # Only this session's own filters, instead of scanning every filter in the broker.
        for topic_filter in list(session.attributes.get(FILTERS_KEY, ())):
            self.unsubscribe(session, topic_filter)

    def _may_subscribe(self, session: FleetSession, topic_filter: str) -> bool:
        """Does the topic policy of *session*'s live connection cover every topic
        *topic_filter* can match? A refusal is reported to ``on_denied``."""
        connection = connection_of(session)
        allowed = False
        if connection is not None:
            try:
                allowed = connection.grants.may_subscribe(topic_filter)
            except Exception:  # the SUBSCRIBE is refused, the connection stays
                log.exception("topic check failed for %s on %r", connection, topic_filter)
        if not allowed:
            self._on_denied(connection, Action.SUBSCRIBE, topic_filter)
        return allowed

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- messages ------------------------------------------------------------------------

    def receive(self, session: FleetSession, topic: str, data: bytes, qos: int,
                retain: bool) -> None:
        """A QoS 0 or 1 PUBLISH from *session*: check it, route it, keep it if retained."""
        if self._accepts(session, topic, data, qos, retain):
            self._publish(session, topic, data, qos, retain)

    def hold(self, session: FleetSession, packet_id: int, topic: str, data: bytes,
             retain: bool) -> None:
        """A QoS 2 PUBLISH: checked now, kept until its PUBREL (4.3.3, method A) within the
        client's budget, else dropped; a resend before the PUBREL is not kept twice."""
        if packet_id in session.unreleased or not self._accepts(session, topic, data, 2, retain):
            return
        if self._admits(session, connection_of(session), weight(topic, data)):
            session.unreleased.hold(packet_id, topic, data, retain,
                                    timeout=self.quotas.qos2_release_timeout)

    def release(self, session: FleetSession, packet_id: int) -> None:
        """The PUBREL of *packet_id*: route the message (nothing if it was dropped or timed
        out: the client's flow still ends with PUBCOMP)."""
        held = session.unreleased.release(packet_id)
        if held is not None:
            topic, data, retain = held
            self._publish(session, topic, data, 2, retain)

    def oversized(self, connection: Connection, size: int) -> None:
        self._on_quota(connection, "max_packet_bytes",
                       f"packet of {size} bytes, above {self.quotas.max_packet_bytes}")

    def _accepts(self, session: FleetSession, topic: str, data: bytes, qos: int,
                 retain: bool) -> bool:
        """May *session* publish to *topic*? A refused PUBLISH is dropped (and audited); one
        to an invalid topic name never gets here (fleet.broker.conformance closes it)."""
        self._received.inc()
        connection = connection_of(session)
        if connection is not None and connection.may_publish(topic) and topic[0] != "$":
            return True
        self._on_denied(connection, Action.PUBLISH, topic)
        return False

    def _publish(self, session: FleetSession, topic: str, data: bytes, qos: int,
                 retain: bool) -> None:
        self.route(topic, data, qos)
        if retain:
            self.retain(session, topic, data, qos)

    def retain(self, session: FleetSession | None, topic: str, data: bytes | bytearray,
               qos: int | None) -> None:
        """Keep (or, for an empty payload, clear) the retained message of *topic*, within the
        retained quota of the device that set it; beyond it, it is routed but not kept."""
        if data:
            connection = connection_of(session)
            device_id = connection.device_id if connection is not None else None
            size = weight(topic, data)
            refusal = self._retained.refusal(device_id, topic, size)
            if refusal is not None:
                assert device_id is not None
                if self._retained.begins(device_id):
                    messages, total = self._retained.usage(device_id)
                    self._on_quota(connection, refusal,
                                   f"holds {messages} retained messages of {total} bytes, "
                                   f"not retained: {topic[:100]!r} ({size} bytes)")
                return
            self._retained.set(device_id, topic, size)
            self.keep_retained(session, topic, data, qos)
        else:  # MQTT-3.3.1-10
            self._retained.clear(topic)
            self.drop_retained(topic)

    def purge_retained(self, device_id: str) -> int:
        """Drop every retained message *device_id* set (and is still the last to have set);
        returns how many."""
        topics = self._retained.release(device_id)
        for topic in topics:
            self.drop_retained(topic)
        return len(topics)

    def route(self, topic: str, data: bytes | bytearray, qos: int) -> None:
        """Deliver a message to every subscription matching *topic*."""
        table = self._table
        for topic_filter in table.matching(topic):
            for target, granted in table[topic_filter]:
                self._deliver(target, topic, data, min(qos, granted), retain=False)

    def _deliver(self, target: FleetSession, topic: str, data: bytes | bytearray, qos: int, *,
                 retain: bool) -> None:
        connection = connection_of(target)
        if connection is None or not connection.may_receive(topic):
            return
        if not target.connected:
            # MQTT-3.1.2-5: kept for a disconnected persistent session, QoS 1 and 2 only.
            if not target.clean_session and qos > 0 \
                    and self._admits(target, None, weight(topic, data)):
                target.queue(topic, data, qos)
            return
        if qos == 0:
            packet = packets.publish(topic, data, retain=retain)
            if self._admits(target, connection, len(packet)):
                connection.send(packet)
                self._delivered.inc()
            return
        if not self._admits(target, connection, weight(topic, data)):
            return
        # Written here; ConnectionReader takes the PUBACK / PUBREC / PUBCOMP (4.3.2, 4.3.3).
        packet_id = target.next_packet_id
        target.sent(packet_id, topic, data, qos, retain=retain)
        connection.write(
            packets.publish(topic, data, qos=qos, packet_id=packet_id, retain=retain))
        self._delivered.inc()

    def _admits(self, target: FleetSession, connection: Connection | None, size: int) -> bool:
        """Does one more message of *size* bytes fit *target*'s queue budget: what it holds,
        plus, with its live *connection*, the QoS 0 deliveries that may still wait in the
        socket? If not, it is dropped."""
        budget, quotas = target.budget, self.quotas
        messages, total = budget.messages + 1, budget.bytes + size
        if connection is not None:
            sent, backlog = connection.backlog()
            if not quotas.within_queue(messages + sent, total + backlog):
                sent, backlog = connection.backlog(exact=True)
            messages, total = messages + sent, total + backlog
        if quotas.within_queue(messages, total):
            if budget.over & QUEUE and quotas.within_queue(2 * messages, 2 * total):
                budget.ends(QUEUE)
            return True
        if connection is not None:
            connection.dropped += 1
        self._dropped.inc()
        if budget.begins(QUEUE):
            quota = ("max_queued_messages" if messages > quotas.max_queued_messages
                     else "max_queued_bytes")
            self._on_quota(connection_of(target), quota,
                           f"{messages - 1} messages of {total - size} bytes waiting; "
                           f"dropping what comes beyond")
        return False

    def deliver_retained(self, session: FleetSession, topic_filter: str, qos: int) -> None:
        if topic_filter not in session.attributes.get(FILTERS_KEY, ()):
            return
        for topic, data, retained_qos in self.retained():
            if matches(topic, topic_filter):
                self._deliver(session, topic, data, min(qos, retained_qos), retain=True)
