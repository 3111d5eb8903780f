"""The CONNECT gate: nothing reaches amqtt before this admits the connection.

For each TLS connection (client certificate already verified in the handshake) the gate
reads the first packet itself, with the connect timeout (S7), and checks in turn:

1. the CONNECT is well-formed MQTT 3.1.1 (else close; another protocol level gets 0x01);
2. the certificate names a device or service of this trust domain (else 0x05);
3. the client id is the device id, or for a service its name or its name followed by one
   of ``-_.:/@`` (else 0x02 identifier rejected); the registry keeps these namespaces
   disjoint (fleet.registry.names);
4. the client id is not held (live or as a stored session) by another identity (else 0x02):
   no connection can wipe, resume or take over another identity's session (S1, S2, S6),
   which also holds for a device and a service whose names collided before the registry
   kept them apart: the first to hold the client id keeps it;
5. the registry admits the certificate: known, not revoked, device active (else 0x05;
   0x03 when the registry is unreachable);
6. the will topic passes the publish policy (else 0x05, S4).

Every refusal is audited (the certificate is verified: one event each). An admitted connection
replaces an earlier connection of the same client id (MQTT-3.1.4-2), is dropped when its
certificate expires or after 1.5 x keep-alive of silence (S5), and its CONNECT bytes are
replayed into amqtt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cryptography import x509

from fleet import pki
from fleet.acl import Grants, Policy
from fleet.authority import Admission, serial_hex
from fleet.broker import packets
from fleet.broker.backend import Audit, Backend
from fleet.broker.connection import (
    Connection,
    ConnectionReader,
    Connections,
    ConnectionWriter,
    connection_of,
)
from fleet.broker.engine import FleetBroker
from fleet.broker.packets import Connect, ProtocolError, UnsupportedProtocolError
from fleet.broker.tls import peer_certificate
from fleet.errors import (
    FleetError,
    ForbiddenError,
    IdentityError,
    RegistryUnavailableError,
)
from fleet.pki import Identity
from fleet.pki.identity import client_id_problem
from fleet.registry.models import utcnow
from fleet.settings import Settings

log = logging.getLogger(__name__)

LISTENER = "default"
MAX_CONNECT_BYTES = 65536
"""A CONNECT (client id, will, user name) larger than this is a protocol abuse."""
_CLOSE_WAIT = 1.0


class Refused(Exception):
    """The gate refuses the CONNECT with this CONNACK code (None: close without CONNACK)."""

    def __init__(self, code: int | None, error: FleetError) -> None:
        super().__init__(str(error))
        self.code = code
        self.error = error


class Gate:
    """Admits TLS connections into the amqtt broker."""

    def __init__(self, *, settings: Settings, backend: Backend, audit: Audit, policy: Policy,
                 broker: FleetBroker, connections: Connections) -> None:
        self._trust_domain = settings.trust_domain
        self._timeout = settings.connect_timeout.total_seconds()
        self._max_connect = min(settings.max_packet_bytes, MAX_CONNECT_BYTES)
        self._max_packet = settings.max_packet_bytes
        self._backend = backend
        self._audit = audit
        self._policy = policy
        self._broker = broker
        self._connections = connections

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    admitted: Callable[[], None]) -> None:
        """Run one connection from the end of its TLS handshake to its close; *admitted* is
        called once the CONNECT is accepted (the connection is no longer pending)."""
        certificate = peer_certificate(writer.get_extra_info("ssl_object"))
        identity: Identity | None = None
        problem: FleetError | None = None
        try:
            identity = pki.identity_from_certificate(certificate, self._trust_domain)
        except IdentityError as exc:
            problem = exc
        connection = Connection(transport=writer.transport, identity=identity,
                                serial=serial_hex(certificate.serial_number),
                                peer=_peer(writer))
        # Indexed before the registry is asked, so a revocation that lands while the
        # admission is in flight still finds (and drops) this connection.
        self._connections.add(connection)
        try:
            try:
                connect = await self._read_connect(connection, reader)
                admission, grants = await self._admit(connection, connect, certificate, problem)
            except Refused as refusal:
                await self._refuse(connection, writer, refusal)
                return
            admitted()
            # Not held for the connection's lifetime (a parsed certificate and its cached
            # extensions are kilobytes per connection); Connection.certificate() reads it again.
            del certificate
            await self._run(connection, connect, admission, grants, reader, writer)
        finally:
            self._connections.remove(connection)
            connection.close()

    async def _read_connect(self, connection: Connection,
                            reader: asyncio.StreamReader) -> Connect:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await packets.read_connect(reader, max_bytes=self._max_connect)
            return packets.parse_connect(raw)
        except TimeoutError:
            raise Refused(None, ProtocolError(
                f"no CONNECT within {self._timeout:g}s of the TLS handshake",
                peer=connection.peer)) from None
        except UnsupportedProtocolError as exc:
            exc.context["peer"] = connection.peer
            raise Refused(packets.UNACCEPTABLE_PROTOCOL_VERSION, exc) from None
        except ProtocolError as exc:
            exc.context["peer"] = connection.peer
            raise Refused(None, exc) from None
        except OSError as exc:  # reset, or TLS error, while reading
            raise Refused(None, ProtocolError(f"connection lost before CONNECT: {exc}",
                                              peer=connection.peer)) from None

    async def _admit(self, connection: Connection, connect: Connect,
                     certificate: x509.Certificate,
                     problem: FleetError | None) -> tuple[Admission, Grants]:
        identity = connection.identity
        context = {"peer": connection.peer, "client_id": connect.client_id}
        if identity is None:
            assert problem is not None
            problem.context.update(context)
            raise Refused(packets.NOT_AUTHORIZED, problem)
        device_id = _device_id(identity)
        reason = client_id_problem(identity, connect.client_id)
        if reason is None:
            owner = self._owner(connect.client_id)
            if owner is not None and owner != identity:
                reason = f"client id {connect.client_id!r} belongs to a session of {owner}"
        if reason is not None:
            raise Refused(packets.IDENTIFIER_REJECTED,
                          IdentityError(reason, device_id=device_id, **context))
        connection.admitted_at = utcnow()
        try:
            admission = await self._backend.admit(certificate)
        except RegistryUnavailableError as exc:
            raise Refused(packets.SERVER_UNAVAILABLE, exc) from None
        except FleetError as exc:
            exc.context.update(context)
            raise Refused(packets.NOT_AUTHORIZED, exc) from None
        if admission.identity != identity:
            raise Refused(packets.NOT_AUTHORIZED, IdentityError(
                f"registry admitted {admission.identity}, the certificate names {identity}",
                device_id=device_id, **context))
        grants = self._policy.grants(role=identity.kind, device_id=device_id,
                                     group=admission.group)
        if connect.will_topic is not None and not grants.may_publish(connect.will_topic):
            raise Refused(packets.NOT_AUTHORIZED, ForbiddenError(
                f"{identity} may not publish its will to {connect.will_topic!r}",
                device_id=device_id, topic=connect.will_topic, **context))
        if connection.closing:
            raise Refused(None, ForbiddenError(
                f"{identity} was dropped while being admitted: {connection.closing_reason}",
                device_id=device_id, **context))
        return admission, grants

    def _owner(self, client_id: str) -> Identity | None:
        """The identity holding *client_id*: a live connection, or a stored session."""
        holder = self._connections.holder(client_id)
        if holder is not None:
            return holder.identity
        stored = self._broker.sessions.get(client_id)
        connection = connection_of(stored[0]) if stored is not None else None
        return connection.identity if connection is not None else None

    async def _refuse(self, connection: Connection, writer: asyncio.StreamWriter,
                      refusal: Refused) -> None:
        self._audit.refused("broker.connect", refusal.error, serial=connection.serial,
                            device_id=_device_id(connection.identity))
        if refusal.code is None or writer.transport.is_closing():
            return
        writer.write(packets.connack(refusal.code))
        try:
            await asyncio.wait_for(writer.drain(), _CLOSE_WAIT)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_WAIT)
        except (OSError, TimeoutError):
            pass

    async def _run(self, connection: Connection, connect: Connect, admission: Admission,
                   grants: Grants, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        previous = self._connections.claim(connection, connect.client_id)
        if previous is not None:  # MQTT-3.1.4-2: the same identity connects again
            previous.abort("replaced by a new connection with the same client id")
            await asyncio.wait({previous.finished}, timeout=self._timeout)
        connection.grants = grants
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(
            max(0.0, (admission.usable_until - utcnow()).total_seconds()),
            self._expired, connection, admission.superseded)
        connection.watch_keep_alive(connect.keep_alive, self._idle)
        try:
            await self._broker.external_connected(
                ConnectionReader(reader, connection, replay=connect.raw,
                                 max_packet_bytes=self._max_packet),
                ConnectionWriter(writer, connection), LISTENER)
        except Exception:
            log.exception("amqtt failed on %s", connection)
        finally:
            expiry.cancel()

    def _expired(self, connection: Connection, superseded: bool) -> None:
        reason = (f"certificate {connection.serial} superseded: its grace ended" if superseded
                  else f"certificate {connection.serial} expired")
        connection.abort(reason)
        self._audit.disconnected("broker.disconnect", reason=reason,
                                 device_id=_device_id(connection.identity),
                                 serial=connection.serial)

    @staticmethod
    def _idle(connection: Connection) -> None:
        log.info("%s silent for 1.5 x keep-alive: dropped", connection)
        connection.abort("keep-alive timeout")


def _device_id(identity: Identity | None) -> str | None:
    return identity.name if identity is not None and identity.kind == "device" else None


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
