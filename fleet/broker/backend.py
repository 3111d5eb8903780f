"""The broker's access to the registry: blocking Authority calls on a small thread pool, and
audit events rate-limited so that a flood of refused connections cannot fill the database."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from cryptography import x509

from fleet.authority import Admission, Authority
from fleet.errors import FleetError
from fleet.registry.models import RevocationEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
ACTOR = "broker"


class Backend:
    """Authority calls (blocking SQLAlchemy) run off the event loop."""

    def __init__(self, authority: Authority, *, workers: int = 4) -> None:
        self.authority = authority
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix="fleet-broker-registry")

    async def call(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(function, *args, **kwargs))

    async def admit(self, certificate: x509.Certificate) -> Admission:
        # The certificate comes from a CERT_REQUIRED handshake against the fleet chain.
        return await self.call(self.authority.admit, certificate=certificate,
                               chain_verified=True)

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


class Audit:
    """Broker audit events, at most *per_minute* a minute; the excess is counted and the
    count recorded with the first event of the next minute."""

    def __init__(self, backend: Backend, *, per_minute: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        self._per_minute = per_minute
        self._clock = clock
        self._window = -1
        self._used = 0
        self._suppressed = 0
        self._pending: set[asyncio.Future[Any]] = set()

    def refused(self, action: str, error: FleetError, *, device_id: str | None = None,
                serial: str | None = None) -> None:
        """A refused connection, subscription or publication."""
        log.info("refused %s: %s", action, error)
        if self._admit():
            self._submit(partial(self._backend.authority.audit_refusal, action, error,
                                 actor=ACTOR, device_id=device_id, serial=serial))

    def disconnected(self, action: str, *, reason: str, device_id: str | None,
                     serial: str | None, detail: dict[str, object] | None = None) -> None:
        """The broker dropped a live connection (revocation, suspension, expiry)."""
        log.info("%s: %s", action, reason)
        if self._admit():
            self._submit(partial(self._backend.record, action, outcome="ok",
                                 device_id=device_id, serial=serial, reason=reason,
                                 detail=detail))

    def _admit(self) -> bool:
        window = int(self._clock() // 60)
        if window != self._window:
            if self._suppressed:
                suppressed = FleetError(
                    f"{self._suppressed} further broker events in one minute were not recorded",
                    suppressed=self._suppressed)
                self._submit(partial(self._backend.authority.audit_refusal, "broker.audit",
                                     suppressed, actor=ACTOR))
            self._window, self._used, self._suppressed = window, 0, 0
        if self._used >= self._per_minute:
            self._suppressed += 1
            return False
        self._used += 1
        return True

    def _submit(self, write: Callable[[], object]) -> None:
        future = asyncio.ensure_future(self._backend.call(write))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait until every submitted event is written."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
