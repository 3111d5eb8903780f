"""The CONNECT gate: nothing reaches amqtt before this admits the connection.

For each TLS connection (client certificate already verified in the handshake) the gate
reads the first packet itself, with the connect timeout (S7): a malformed CONNECT is closed
without a CONNACK, another protocol level gets 0x01. The CONNECT is then decided by the
admission checks of fleet.authority.admission, the list ``fleet diagnose`` shows: identity,
client id (the device id, or a service's name optionally followed by one of ``-_.:/@``), the
client id's session (not held, live or stored, by another identity: no connection can wipe,
resume or take over another identity's session, S1, S2, S6), revocation state (confirmed by
the watcher within ``broker.revocation_max_staleness``, else 0x03: fail closed), registry
status, superseded grace and the will topic against the publish policy (S4); a refusal gets
the CONNACK its check names. The registry status comes from the admission cache when it holds
a trusted entry (fleet.broker.admission_cache: decided on the event loop, no registry read),
else from the registry on the backend's threads, and the answer is kept if it admits.

Every refusal is audited (the certificate is verified: one event each). An admitted connection
replaces an earlier connection of the same client id (MQTT-3.1.4-2), is dropped when its
certificate expires or after 1.5 x keep-alive of silence (S5), and the CONNECT parsed here
is handed to amqtt: fleet.broker.amqtt_adapter makes the session from it, and amqtt never
parses it again. When its certificate or its client id is already connected from another
address, the gate audits ``broker.shared`` naming both (``fleet health`` reports it: a copied
key, or a device that moved while its old connection lingered). A later packet that breaks
MQTT 3.1.1 (fleet.broker.conformance) closes the connection and is audited as
``broker.protocol``, naming the rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography import x509

from fleet import pki
from fleet.acl import Policy
from fleet.authority import Admission, ConnectReturnCode, serial_hex
from fleet.broker import packets
from fleet.broker.admission_cache import AdmissionCache
from fleet.broker.backend import Audit, Backend, host_of
from fleet.broker.connection import (
    Connection,
    ConnectionProtocol,
    ConnectionReader,
    Connections,
    connection_of,
)
from fleet.broker.engine import FleetBroker
from fleet.broker.health import BrokerMetrics
from fleet.broker.packets import Connect, ProtocolError, UnsupportedProtocolError, Violation
from fleet.broker.tls import peer_certificate
from fleet.errors import (
    FleetError,
    ForbiddenError,
    IdentityError,
    RegistryUnavailableError,
)
from fleet.health import SHARED_ACTION
from fleet.logs import fields
from fleet.pki import Identity
from fleet.registry.models import utcnow
from fleet.settings import Settings

log = logging.getLogger(__name__)

MAX_CONNECT_BYTES = 65536
"""A CONNECT (client id, will, user name) larger than this is a protocol abuse."""
_CLOSE_WAIT = 1.0


PROTOCOL = "protocol"
"""The check named by refusals of a CONNECT that could not be read or parsed."""


class Refused(Exception):
    """The gate refuses the CONNECT with this CONNACK code (None: close without CONNACK);
    *check* names what refused it (an admission check, or PROTOCOL)."""

    def __init__(self, code: int | None, error: FleetError, check: str = PROTOCOL) -> None:
        super().__init__(str(error))
        self.code = code
        self.error = error
        self.check = check


class Gate:
    """Admits TLS connections into the amqtt broker."""

    def __init__(self, *, settings: Settings, backend: Backend, audit: Audit, policy: Policy,
                 broker: FleetBroker, connections: Connections,
                 revocations_confirmed_at: Callable[[], datetime],
                 admissions: AdmissionCache, metrics: BrokerMetrics) -> None:
        self._trust_domain = settings.trust_domain
        self._timeout = settings.connect_timeout.total_seconds()
        self._max_connect = min(settings.max_packet_bytes, MAX_CONNECT_BYTES)
        self._max_packet = settings.max_packet_bytes
        self._backend = backend
        self._audit = audit
        self._policy = policy
        self._broker = broker
        self._connections = connections
        self._confirmed_at = revocations_confirmed_at
        self._admissions = admissions
        self._metrics = metrics

    async def serve(self, protocol: ConnectionProtocol, writer: asyncio.StreamWriter,
                    admitted: Callable[[], None]) -> None:
        """Run one connection from the end of its TLS handshake to its close; *admitted* is
        called once the CONNECT is accepted (the connection is no longer pending)."""
        certificate = peer_certificate(writer.get_extra_info("ssl_object"))
        identity: Identity | None = None
        with contextlib.suppress(IdentityError):  # refused by the admission's identity check
            identity = pki.identity_from_certificate(certificate, self._trust_domain)
        connection = Connection(transport=writer.transport, identity=identity,
                                serial=serial_hex(certificate.serial_number),
                                peer=_peer(writer))
        # Indexed before the registry is asked, so a revocation that lands while the
        # admission is in flight still finds (and drops) this connection.
        self._connections.add(connection)
        try:
            try:
                connect = await self._read_connect(connection, protocol.stream)
                admission = await self._admit(connection, connect, certificate)
            except Refused as refusal:
                await self._refuse(connection, writer, refusal)
                return
            admitted()
            self._metrics.admitted(connection.identity.kind if connection.identity else "-")
            log.info("connection admitted", extra=_fields(
                connection, client_id=connect.client_id, keep_alive=connect.keep_alive,
                clean_session=connect.clean_session))
            # Not held for the connection's lifetime (a parsed certificate and its cached
            # extensions are kilobytes per connection); Connection.certificate() reads it again.
            del certificate
            await self._run(connection, connect, admission, protocol, writer)
            log.info("connection closed", extra=_fields(
                connection, reason=connection.closing_reason or "closed by the client"))
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
            raise Refused(ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION, exc) from None
        except ProtocolError as exc:
            exc.context["peer"] = connection.peer
            raise Refused(None, exc) from None
        except OSError as exc:  # reset, or TLS error, while reading
            raise Refused(None, ProtocolError(f"connection lost before CONNECT: {exc}",
                                              peer=connection.peer)) from None

    async def _admit(self, connection: Connection, connect: Connect,
                     certificate: x509.Certificate) -> Admission:
        connection.admitted_at = utcnow()
        connecting: dict[str, Any] = dict(
            client_id=connect.client_id, will_topic=connect.will_topic, sessions_known=True,
            session_holder=self._owner(connect.client_id),
            revocations_confirmed_at=self._confirmed_at(), policy=self._policy)
        cached = self._admissions.hit(connection.serial)
        if cached is not None:
            decision = self._backend.assess_here(certificate, lookup=lambda _: cached,
                                                 **connecting)
        else:
            decision = await self._backend.assess(certificate, lookup=self._admissions.read,
                                                  **connecting)
        refusal = decision.refusal
        if refusal is not None:
            assert refusal.error is not None
            if not isinstance(refusal.error, RegistryUnavailableError):
                refusal.error.context.update(peer=connection.peer, client_id=connect.client_id)
            raise Refused(decision.connack, refusal.error, refusal.check.name)
        assert decision.admission is not None
        if connection.closing:
            raise Refused(None, ForbiddenError(
                f"{connection.identity} was dropped while being admitted: "
                f"{connection.closing_reason}", device_id=_device_id(connection.identity),
                peer=connection.peer, client_id=connect.client_id), "revocation")
        return decision.admission

    def _owner(self, client_id: str) -> Identity | None:
        """The identity holding *client_id*: a live connection, or a stored session."""
        holder = self._connections.holder(client_id)
        if holder is not None:
            return holder.identity
        connection = connection_of(self._broker.stored(client_id))
        return connection.identity if connection is not None else None

    async def _refuse(self, connection: Connection, writer: asyncio.StreamWriter,
                      refusal: Refused) -> None:
        self._audit.refused("broker.connect", refusal.error, serial=connection.serial,
                            device_id=_device_id(connection.identity))
        self._metrics.refused(refusal.code, refusal.check)
        log.info("connection refused", extra=_fields(
            connection, client_id=refusal.error.context.get("client_id"),
            connack="none" if refusal.code is None else f"0x{refusal.code:02x}",
            check=refusal.check, reason=refusal.error.message))
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
                   protocol: ConnectionProtocol, writer: asyncio.StreamWriter) -> None:
        previous = self._connections.claim(connection, connect.client_id)
        self._shared(connection, previous)
        if previous is not None:  # MQTT-3.1.4-2: the same identity connects again
            previous.abort("replaced by a new connection with the same client id")
            await asyncio.wait({previous.finished}, timeout=self._timeout)
        connection.grants = admission.grants
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(
            max(0.0, (admission.usable_until - utcnow()).total_seconds()),
            self._expired, connection, admission.superseded)
        connection.watch_keep_alive(connect.keep_alive, self._idle)
        reader = ConnectionReader(protocol, connection, max_packet_bytes=self._max_packet,
                                  on_violation=self._violated)
        try:
            await protocol.hand_over(reader)
            await self._broker.connected(reader, writer, connection, connect)
        except Exception:
            log.exception("amqtt failed on %s", connection)
        finally:
            expiry.cancel()

    def _shared(self, connection: Connection, previous: Connection | None) -> None:
        """Audit each admitted connection from another address that holds this connection's
        certificate, or the client id it takes over (*previous*)."""
        address = host_of(connection.peer)
        others = {other for other in self._connections.with_serial(connection.serial)
                  if other.client_id is not None and other is not connection}
        if previous is not None:
            others.add(previous)
        for other in others:
            other_address = host_of(other.peer)
            if other_address == address:
                continue
            reason = (f"certificate {connection.serial} connected from {address} while "
                      f"connected from {other_address}" if other.serial == connection.serial
                      else f"client id {connection.client_id!r} connected from {address} "
                      f"(certificate {connection.serial}) while connected from "
                      f"{other_address} (certificate {other.serial})")
            detail: dict[str, object] = {
                "client_id": connection.client_id, "peer": connection.peer, "address": address,
                "other_client_id": other.client_id, "other_peer": other.peer,
                "other_address": other_address, "other_serial": other.serial,
                "replaced": other is previous}
            self._audit.noted(SHARED_ACTION, reason=reason, device_id=connection.device_id,
                              serial=connection.serial, detail=detail)

    def _expired(self, connection: Connection, superseded: bool) -> None:
        reason = (f"certificate {connection.serial} superseded: its grace ended" if superseded
                  else f"certificate {connection.serial} expired")
        connection.abort(reason)
        self._audit.disconnected("broker.disconnect", reason=reason,
                                 device_id=_device_id(connection.identity),
                                 serial=connection.serial)

    def _violated(self, connection: Connection, violation: Violation) -> None:
        violation.context.update(peer=connection.peer, client_id=connection.client_id)
        self._audit.refused("broker.protocol", violation, serial=connection.serial,
                            device_id=_device_id(connection.identity))

    @staticmethod
    def _idle(connection: Connection) -> None:
        log.info("%s silent for 1.5 x keep-alive: dropped", connection)
        connection.abort("keep-alive timeout")


def _fields(connection: Connection, *, client_id: object = None,
            **more: object) -> dict[str, object]:
    """The fields of a connection's log lines (its client id once it has claimed one)."""
    return fields(connection_id=connection.id, peer=connection.peer,
                  identity=str(connection.identity) if connection.identity else None,
                  serial=connection.serial, client_id=client_id or connection.client_id,
                  **more)


def _device_id(identity: Identity | None) -> str | None:
    return identity.name if identity is not None and identity.kind == "device" else None


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
