"""What survives a broker restart: persistent sessions and retained messages, written to
``<data_dir>/broker/state.json`` every ``broker.persistence_interval`` and at shutdown, and
read back at start (like Mosquitto's ``persistence`` and ``autosave_interval``; a crash loses
at most one interval). ``broker.persistence = false``: no file is read or written.

A persistent session (clean_session=0) is kept with the identity and certificate serial of the
connection that last held it and the topic grants it had, its subscriptions and their QoS, the
QoS 1/2 messages queued while its client is away, its deliveries in flight (a PUBLISH not
acknowledged, or a PUBREL whose PUBCOMP is missing) with their packet identifiers, the inbound
QoS 2 messages its client has not released, and how long its client has been away (the
``broker.session_expiry`` clock runs on through the downtime). A retained message is kept with
the device charged with it, so the retained quotas and the revocation purge hold after a
restart. Clean sessions, QoS 0 messages and wills are not kept.

The file is written whole, to a temporary file that is synced and then renamed over the old
one (fleet.files.write_private: 0600, in a 0700 directory). At start, what it holds is taken
in within the quotas of today's settings; a file that cannot be read or understood is logged,
set aside as ``state.json.unreadable-<time>`` and the broker starts empty. Once the revocation
watcher runs, the registry is asked about every identity the file named: the sessions of a
device revoked or suspended meanwhile (or deleted), and of a certificate revoked meanwhile, are
purged, with the retained messages of such devices, as the watcher would have done (one
``broker.purge`` audit event each).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from fleet.acl import Grants, is_topic_filter, is_topic_name
from fleet.broker.amqtt_adapter import FleetSession
from fleet.broker.backend import Audit, Backend
from fleet.broker.connection import Connection, connection_of
from fleet.broker.engine import FleetBroker
from fleet.broker.quotas import weight
from fleet.files import private_dir, write_private
from fleet.pki import Identity
from fleet.pki.identity import client_id_problem

log = logging.getLogger(__name__)

FORMAT = 1
FILE_NAME = "state.json"
ENDED = "ended before the broker restarted"
"""The closing reason of the connection a restored session was last held through."""


def _topic_name(value: str) -> str:
    if not is_topic_name(value):
        raise ValueError(f"not a topic name: {value!r}")
    return value


def _topic_filter(value: str) -> str:
    if not is_topic_filter(value):
        raise ValueError(f"not a topic filter: {value!r}")
    return value


TopicName = Annotated[str, AfterValidator(_topic_name)]
TopicFilter = Annotated[str, AfterValidator(_topic_filter)]
PacketId = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(ge=0)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="base64",
                              val_json_bytes="base64")


class QueuedMessage(_Record):
    """A QoS 1/2 message routed to the session while its client was away."""

    topic: TopicName
    payload: bytes
    qos: Literal[1, 2]


class InFlight(_Record):
    """A QoS 1/2 delivery written to the client and not yet complete; *released*: its
    PUBREC came and PUBREL went out (what is resent on resume is the PUBREL)."""

    packet_id: PacketId
    topic: TopicName
    payload: bytes
    qos: Literal[1, 2]
    retain: bool
    released: bool


class Unreleased(_Record):
    """An inbound QoS 2 message (PUBREC sent) waiting for its PUBREL."""

    packet_id: PacketId
    topic: TopicName
    payload: bytes
    retain: bool
    expires_in: Seconds
    """Seconds of ``broker.qos2_release_timeout`` it had left."""


class StoredGrants(_Record):
    publish: tuple[TopicFilter, ...]
    subscribe: tuple[TopicFilter, ...]
    no_dollar: bool


class StoredSession(_Record):
    client_id: Annotated[str, Field(min_length=1, max_length=65535)]
    kind: Literal["device", "service"]
    name: Annotated[str, Field(min_length=1)]
    serial: Annotated[str, Field(pattern=r"^[0-9a-f]{1,40}$")]
    grants: StoredGrants
    subscriptions: tuple[tuple[TopicFilter, Literal[0, 1, 2]], ...]
    inflight: tuple[InFlight, ...]
    unreleased: tuple[Unreleased, ...]
    queued: tuple[QueuedMessage, ...]
    away_for: Seconds
    """Seconds its client had been away when the file was written (0: connected)."""

    @model_validator(mode="after")
    def _client_id_of_identity(self) -> StoredSession:
        problem = client_id_problem(Identity(self.kind, self.name), self.client_id)
        if problem is not None:
            raise ValueError(problem)
        return self


class RetainedMessage(_Record):
    topic: TopicName
    payload: Annotated[bytes, Field(min_length=1)]
    qos: Literal[0, 1, 2]
    owner: str | None
    """The device charged with it (None: a service's or the broker's, not charged)."""


class State(_Record):
    """The file (JSON; payloads in base64)."""

    format: Literal[1]
    saved_at: AwareDatetime
    sessions: tuple[StoredSession, ...]
    retained: tuple[RetainedMessage, ...]

    @model_validator(mode="after")
    def _each_once(self) -> State:
        for what, keys in (("client id", [s.client_id for s in self.sessions]),
                           ("retained topic", [r.topic for r in self.retained])):
            if len(set(keys)) != len(keys):
                raise ValueError(f"a {what} appears more than once")
        return self


@dataclass(frozen=True)
class Restored:
    """What a start took in from the file, and what it left out."""

    sessions: int = 0
    messages: int = 0
    retained: int = 0
    expired: int = 0
    """Sessions whose client had been away for longer than ``broker.session_expiry``."""
    dropped: int = 0
    """Messages, subscriptions and retained messages beyond today's quotas, or expired."""


class _Gone(asyncio.WriteTransport):
    """The transport of a connection that ended before the broker restarted: closed."""

    def is_closing(self) -> bool:
        return True

    def abort(self) -> None:
        """Already closed."""

    def get_write_buffer_size(self) -> int:
        return 0


class Store:
    """The broker's state file: read once at start, written every *interval* and at
    :meth:`close`."""

    def __init__(self, path: Path, *, broker: FleetBroker, interval: float) -> None:
        self.path = path
        self._broker = broker
        self._interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writable = True
        self._named: tuple[set[str], set[str]] = (set(), set())  # devices, serials read

    @classmethod
    def in_data_dir(cls, data_dir: Path, *, broker: FleetBroker, interval: float) -> Store:
        return cls(data_dir / "broker" / FILE_NAME, broker=broker, interval=interval)

    # -- start -----------------------------------------------------------------------------

    async def load(self) -> Restored:
        """Take in what the file holds (nothing if there is none, or if it is unreadable:
        that one is set aside)."""
        try:
            state = await asyncio.to_thread(self._read)
        except FileNotFoundError:
            return Restored()
        except (OSError, ValueError) as error:  # ValidationError is a ValueError
            self._set_aside(error)
            return Restored()
        restored = restore(self._broker, state, now=datetime.now(UTC))
        self._named = named(state)
        log.info("restored %d persistent sessions (%d messages) and %d retained messages "
                 "from %s, saved %s; left out: %d expired sessions, %d beyond the quotas",
                 restored.sessions, restored.messages, restored.retained, self.path,
                 state.saved_at.isoformat(), restored.expired, restored.dropped)
        return restored

    def _read(self) -> State:
        return State.model_validate_json(self.path.read_bytes())

    def _set_aside(self, error: Exception) -> None:
        reason = _reason(error)
        aside = self.path.with_name(
            f"{self.path.name}.unreadable-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self._writable = False
            log.error("broker state file %s is unreadable (%s) and could not be set aside "
                      "(%s): starting with no stored sessions or retained messages, and "
                      "not saving any, so that it is not overwritten", self.path, reason, exc)
            return
        log.error("broker state file %s is unreadable (%s): set aside as %s; starting with "
                  "no stored sessions or retained messages", self.path, reason, aside)

    async def purge_withdrawn(self, backend: Backend, audit: Audit) -> None:
        """Purge what the file held for identities revoked or suspended since it was
        written. Call once the revocation watcher runs (it purges what is revoked from then
        on) and before clients can connect."""
        devices, serials = self._named
        self._named = (set(), set())
        if not devices and not serials:
            return
        withdrawn = await backend.withdrawn(device_ids=devices, serials=serials)
        broker, purged = self._broker, 0
        for session in broker.persistent_sessions():
            connection = connection_of(session)
            if connection is None:
                continue
            device_id, serial = connection.device_id, connection.serial
            if device_id is not None and device_id in withdrawn.devices:
                reason = f"device {device_id} {withdrawn.devices[device_id]}"
            elif serial in withdrawn.serials:
                reason = f"certificate {serial} {withdrawn.serials[serial]}"
            else:
                continue
            held = await broker.purge_session(session.client_id)
            purged += 1
            audit.disconnected(
                "broker.purge", reason=f"{reason} while the broker was down",
                device_id=device_id, serial=serial,
                detail={"sessions": 1, "queued": held or 0, "retained": 0, "wills": 0})
        retained = 0
        for device_id, status in sorted(withdrawn.devices.items()):
            count = broker.purge_retained(device_id)
            if count:
                retained += count
                audit.disconnected(
                    "broker.purge", reason=f"device {device_id} {status} while the broker "
                                           "was down", device_id=device_id, serial=None,
                    detail={"sessions": 0, "queued": 0, "retained": count, "wills": 0})
        if purged or retained:
            log.info("purged %d restored sessions and %d retained messages of identities "
                     "revoked or suspended while the broker was down", purged, retained)

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Save every interval until :meth:`close`."""
        self._task = asyncio.create_task(self._run(), name="fleet-broker-persistence")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self._interval)
                return
            except TimeoutError:
                await self.save()

    async def save(self) -> None:
        """Write the broker's state now (the snapshot is taken at once; encoding and the
        write run on a thread). A failure is logged; the next interval tries again."""
        if not self._writable:
            return
        captured = capture(self._broker, now=datetime.now(UTC))
        try:
            await asyncio.to_thread(self._write, captured)
        except OSError as error:
            log.error("could not save the broker's state to %s: %s", self.path, error)

    def _write(self, captured: Captured) -> None:
        private_dir(self.path.parent, tighten=True)
        write_private(self.path, state_of(captured).model_dump_json().encode())

    async def close(self) -> None:
        """Stop the interval and save once more (call once the connections have ended)."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.save()


# -- the broker's state <-> the file -------------------------------------------------------

class CapturedSession(NamedTuple):
    """One persistent session as plain references (see :func:`capture`)."""

    client_id: str
    identity: Identity
    serial: str
    grants: Grants
    subscriptions: list[tuple[str, int]]
    inflight: list[tuple[int, str, bytes, int, bool, bool]]
    unreleased: list[tuple[int, float, str, bytes, bool]]
    queued: list[tuple[str, bytes, int]]
    away_for: float


class Captured(NamedTuple):
    saved_at: datetime
    sessions: list[CapturedSession]
    retained: list[tuple[str, bytes, int, str | None]]


def capture(broker: FleetBroker, *, now: datetime) -> Captured:
    """What :func:`state_of` needs, taken from the broker at once. This runs on the event
    loop, so it only gathers references (payloads are immutable); the file's records are
    built from them on the writer's thread."""
    sessions = []
    for session in broker.persistent_sessions():
        connection = connection_of(session)
        if connection is None or connection.identity is None:
            continue
        sessions.append(CapturedSession(
            session.client_id, connection.identity, connection.serial, connection.grants,
            broker.subscriptions_of(session),
            [(flight.packet_id, flight.topic, flight.data, flight.qos, bool(flight.retain),
              flight.released) for flight in session.inflight()],
            session.unreleased.held(),
            session.queued(),
            broker.away_for(session.client_id)))
    return Captured(now, sessions, broker.retained_with_owners())


def state_of(captured: Captured) -> State:
    """The file's records for *captured* (built without validation: it is the broker's own
    state)."""
    return State.model_construct(
        format=FORMAT, saved_at=captured.saved_at,
        sessions=tuple(_stored(session) for session in captured.sessions),
        retained=tuple(RetainedMessage.model_construct(topic=topic, payload=data, qos=qos,
                                                       owner=owner)
                       for topic, data, qos, owner in captured.retained))


def _stored(session: CapturedSession) -> StoredSession:
    grants = session.grants
    return StoredSession.model_construct(
        client_id=session.client_id, kind=session.identity.kind, name=session.identity.name,
        serial=session.serial,
        grants=StoredGrants.model_construct(publish=grants.publish, subscribe=grants.subscribe,
                                            no_dollar=grants.no_dollar),
        subscriptions=tuple(session.subscriptions),
        inflight=tuple(InFlight.model_construct(packet_id=packet_id, topic=topic,
                                                payload=bytes(data), qos=qos, retain=retain,
                                                released=released)
                       for packet_id, topic, data, qos, retain, released in session.inflight),
        unreleased=tuple(Unreleased.model_construct(packet_id=packet_id, topic=topic,
                                                    payload=data, retain=retain,
                                                    expires_in=max(0.0, left))
                         for packet_id, left, topic, data, retain in session.unreleased),
        queued=tuple(QueuedMessage.model_construct(topic=topic, payload=bytes(data), qos=qos)
                     for topic, data, qos in session.queued),
        away_for=session.away_for)


def snapshot(broker: FleetBroker, *, now: datetime) -> State:
    """The broker's persistent sessions and retained messages, as they are now."""
    return state_of(capture(broker, now=now))


def restore(broker: FleetBroker, state: State, *, now: datetime) -> Restored:
    """Take *state* into a broker that holds nothing yet, within its quotas."""
    downtime = max(0.0, (now - state.saved_at).total_seconds())
    sessions = messages = expired = dropped = 0
    # Longest away first: each session's expiry then comes in the order they are taken in.
    for stored in sorted(state.sessions, key=lambda s: s.away_for, reverse=True):
        away_for = stored.away_for + downtime
        if away_for >= broker.session_expiry:
            expired += 1
            continue
        session, kept, left_out = _session(broker, stored, downtime)
        dropped += left_out + broker.adopt(session, list(stored.subscriptions),
                                           away_for=away_for)
        sessions, messages = sessions + 1, messages + kept
    retained = 0
    for message in state.retained:
        if broker.restore_retained(message.topic, message.payload, message.qos,
                                   message.owner):
            retained += 1
        else:
            dropped += 1
    return Restored(sessions=sessions, messages=messages, retained=retained, expired=expired,
                    dropped=dropped)


def _session(broker: FleetBroker, stored: StoredSession,
             downtime: float) -> tuple[FleetSession, int, int]:
    """A restored session bound to (a closed stand-in for) the connection that last held
    it, with the messages that fit its queue budget: (session, kept, left out)."""
    connection = Connection(transport=_Gone(), serial=stored.serial,
                            identity=Identity(stored.kind, stored.name), peer="(restored)")
    connection.client_id = stored.client_id
    connection.closing_reason = ENDED
    connection.grants = Grants(publish=stored.grants.publish,
                               subscribe=stored.grants.subscribe,
                               no_dollar=stored.grants.no_dollar)
    session = FleetSession.restored(stored.client_id)
    connection.bind(session)
    connection.close()
    quotas, budget = broker.quotas, session.budget
    kept = left_out = 0

    def fits(topic: str, data: bytes) -> bool:
        nonlocal kept, left_out
        if quotas.within_queue(budget.messages + 1, budget.bytes + weight(topic, data)):
            kept += 1
            return True
        left_out += 1
        return False

    sent: set[int] = set()
    for flight in stored.inflight:
        if flight.packet_id not in sent and fits(flight.topic, flight.payload):
            sent.add(flight.packet_id)
            session.sent(flight.packet_id, flight.topic, flight.payload, flight.qos,
                         retain=flight.retain, released=flight.released)
    # Soonest to expire first: the one timer of Unreleased follows insertion order.
    for held in sorted(stored.unreleased, key=lambda u: u.expires_in):
        timeout = held.expires_in - downtime
        if timeout <= 0 or held.packet_id in session.unreleased:
            left_out += 1
        elif fits(held.topic, held.payload):
            session.unreleased.hold(held.packet_id, held.topic, held.payload, held.retain,
                                    timeout=timeout)
    for queued in stored.queued:
        if fits(queued.topic, queued.payload):
            session.queue(queued.topic, queued.payload, queued.qos)
    return session, kept, left_out


def named(state: State) -> tuple[set[str], set[str]]:
    """The device ids and certificate serials *state* holds something for."""
    devices = {s.name for s in state.sessions if s.kind == "device"}
    devices.update(r.owner for r in state.retained if r.owner is not None)
    return devices, {s.serial for s in state.sessions}


def _reason(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        return f"{where}: {first['msg']} ({error.error_count()} errors)"
    return f"{type(error).__name__}: {error}"
