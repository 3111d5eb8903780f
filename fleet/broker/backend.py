"""The broker's access to the registry: blocking Authority calls on a small thread pool, and
audit events that a flood of refused connections cannot multiply.

Audit writes run on a thread of their own, one at a time, so a registry that makes them slow
(SQLite's busy wait on a locked file, a PostgreSQL server that does not answer) never takes
the threads that admit connections, and at most ``MAX_AUDIT_BACKLOG`` of them wait: beyond,
an event is logged (as every audited broker event is) but not written, and counted
(``fleet_broker_audit_events_dropped_total``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from cryptography import x509

from fleet.audit import Aggregate, RefusalDigest, actor_of
from fleet.authority import Admission, Authority, Decision
from fleet.broker.health import BrokerMetrics
from fleet.errors import FleetError
from fleet.registry import statuses
from fleet.registry.engine import session as registry_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import RevocationEvent
from fleet.registry.statuses import Withdrawn

log = logging.getLogger(__name__)

T = TypeVar("T")
ACTOR = "broker"
MAX_AUDIT_BACKLOG = 1000
"""Audit events waiting to be written, at most."""


class Backend:
    """Authority calls (blocking SQLAlchemy) run off the event loop."""

    def __init__(self, authority: Authority, *, workers: int = 4) -> None:
        self.authority = authority
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix="fleet-broker-registry")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-broker-audit")

    async def call(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(function, *args, **kwargs))

    async def write(self, function: Callable[[], T]) -> T:
        """Run an audit write on the audit thread."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, function)

    async def admit(self, certificate: x509.Certificate) -> Admission:
        # The certificate comes from a CERT_REQUIRED handshake against the fleet chain.
        return await self.call(self.authority.admit, certificate=certificate,
                               chain_verified=True)

    async def assess(self, certificate: x509.Certificate, **connect: Any) -> Decision:
        """Admission of a CONNECT (see AdmissionPolicy.assess), chain already verified."""
        return await self.call(self.assess_here, certificate, **connect)

    def assess_here(self, certificate: x509.Certificate, **connect: Any) -> Decision:
        """The same on the calling thread: only with a lookup that reads no registry."""
        return self.authority.assess(certificate, chain_verified=True, **connect)

    async def withdrawn(self, *, device_ids: Collection[str],
                        serials: Collection[str]) -> Withdrawn:
        """Which of these devices and certificates are withdrawn (fleet.registry.statuses)."""
        return await self.call(self._withdrawn, device_ids, serials)

    def _withdrawn(self, device_ids: Collection[str], serials: Collection[str]) -> Withdrawn:
        with unavailable_as_error(), registry_session(self.authority.engine) as session:
            return statuses.withdrawn(session=session, device_ids=device_ids, serials=serials)

    async def revocations_after(self, after_id: int) -> Sequence[RevocationEvent]:
        return await self.call(self.authority.revocations_after, after_id)

    async def last_revocation_id(self) -> int:
        return await self.call(self.authority.last_revocation_id)

    def record(self, action: str, *, outcome: str, device_id: str | None, serial: str | None,
               reason: str | None, detail: dict[str, object] | None) -> None:
        """Write one audit event (blocking; call through :meth:`call`)."""
        try:
            with self.authority.transaction() as session:
                self.authority.audit(session, action=action, outcome=outcome, actor=ACTOR,
                                     device_id=device_id, serial=serial, reason=reason,
                                     detail=detail)
        except FleetError as error:
            log.warning("audit event %s not recorded: %s", action, error)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._writer.shutdown(wait=True)


class Audit:
    """The broker's audit events.

    Events that carry a verified identity (a refused CONNECT with a fleet certificate, a
    revocation drop, a quota episode) are written one by one, whatever strangers do.
    Refusals without one (failed handshakes, connections cut by a cap) are aggregated per
    source address and interval, and so are a device's denied PUBLISH and SUBSCRIBE
    packets, per device, in a digest of their own (fleet.audit): neither a stranger nor a
    misbehaving device can turn a flood into one row per packet.
    """

    def __init__(self, backend: Backend, *, interval: float, max_sources: int,
                 metrics: BrokerMetrics) -> None:
        self._backend = backend
        self._strangers = RefusalDigest(interval=interval, max_sources=max_sources)
        self._denials = RefusalDigest(interval=interval, max_sources=max_sources)
        self._metrics = metrics
        self._pending: set[asyncio.Future[Any]] = set()
        self._dropped: Counter[str] = Counter()
        """Events not written since the backlog was last full, by action."""

    def start(self) -> None:
        self._strangers.start(self._record)
        self._denials.start(self._record)

    def refused(self, action: str, error: FleetError, *, device_id: str | None = None,
                serial: str | None = None) -> None:
        """A refusal of a connection that presented a verified fleet certificate."""
        log.info("refused %s: %s", action, error)
        self._submit(action, partial(self._backend.authority.audit_refusal, action, error,
                                     actor=ACTOR, device_id=device_id, serial=serial))

    def unverified(self, action: str, error: FleetError) -> None:
        """A refusal that proves nothing about the peer (aggregated by source address)."""
        self._strangers.add(action, actor=actor_of(ACTOR, host_of(error.context.get("peer"))),
                            reason=error.message)

    def denied(self, action: str, error: FleetError, *, identity: str, topic: str) -> None:
        """A PUBLISH or SUBSCRIBE outside the policy (aggregated by identity and topic)."""
        log.debug("denied %s: %s", action, error)
        self._denials.add(action, actor=actor_of(ACTOR, identity), reason=error.message,
                          subject=topic)

    def disconnected(self, action: str, *, reason: str, device_id: str | None,
                     serial: str | None, detail: dict[str, object] | None = None) -> None:
        """The broker dropped a live connection (revocation, suspension, expiry)."""
        self.noted(action, reason=reason, device_id=device_id, serial=serial, detail=detail)

    def noted(self, action: str, *, reason: str, device_id: str | None, serial: str | None,
              detail: dict[str, object] | None = None) -> None:
        """Something the broker saw and did not refuse (outcome ``ok``)."""
        log.info("%s: %s", action, reason)
        self._submit(action, partial(self._backend.record, action, outcome="ok",
                                     device_id=device_id, serial=serial, reason=reason,
                                     detail=detail))

    async def _record(self, aggregates: list[Aggregate]) -> None:
        await self._backend.write(partial(self._backend.authority.record_refusals, aggregates))

    def _submit(self, action: str, write: Callable[[], object]) -> None:
        if len(self._pending) >= MAX_AUDIT_BACKLOG:
            if not self._dropped:
                log.warning("audit backlog full (%d events waiting to be written): further "
                            "events are logged but not written until it drains",
                            len(self._pending))
            self._dropped[action] += 1
            self._metrics.audit_dropped(action)
            return
        future = asyncio.ensure_future(self._backend.write(write))
        self._pending.add(future)
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and (error := future.exception()) is not None:
            log.warning("audit event not recorded: %s: %s", type(error).__name__, error)
        if self._dropped and not self._pending:
            dropped, self._dropped = self._dropped, Counter()
            log.warning("audit backlog drained; events logged but not written meanwhile: %s",
                        ", ".join(f"{count} {action}" for action, count in dropped.items()))

    async def close(self) -> None:
        """Record what the digests hold and wait until every submitted event is written."""
        await self._strangers.stop(self._record)
        await self._denials.stop(self._record)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def host_of(peer: object) -> str:
    """The address part of ``host:port`` or ``[v6]:port``."""
    text = str(peer) if peer else "unknown"
    host, colon, port = text.rpartition(":")
    return host.strip("[]") if colon and port.isdigit() else text
