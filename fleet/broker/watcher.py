"""The revocation watcher: drops live connections of revoked or suspended identities.

Polls the registry's revocation events every ``revocation_poll_interval``. An event naming a
certificate serial drops every connection that presented that certificate; an event naming
only a device (device revoked or suspended) drops every connection of that device. The
dropped identity's will is not published, and once its connections are gone its stored
sessions are purged so that nothing is resumed later. Reconnects are refused by the gate,
which asks the registry on every CONNECT; a resumed device is admitted again.

Revocation is final, so its connections are dropped at once. A suspension can be lifted
before the watcher sees it; a connection admitted after the resume must survive the late
event. So a connection admitted before the suspension was recorded is dropped at once, and
one admitted since is asked about again (as at CONNECT) and dropped unless the registry
admits it now (an unreachable registry drops it too). A connection still waiting for its
admission is left to the gate, which reads the device's current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fleet.broker.backend import Audit, Backend
from fleet.broker.connection import Connection, Connections, connection_of
from fleet.broker.engine import FleetBroker
from fleet.errors import FleetError
from fleet.pki import Identity
from fleet.registry.models import RevocationEvent

log = logging.getLogger(__name__)

_FINISH_WAIT = 5.0


class RevocationWatcher:
    def __init__(self, *, backend: Backend, audit: Audit, connections: Connections,
                 broker: FleetBroker, interval: float) -> None:
        self._backend = backend
        self._audit = audit
        self._connections = connections
        self._broker = broker
        self._interval = interval
        self._last = 0
        self._task: asyncio.Task[None] | None = None
        self._purges: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start after the newest event: earlier ones are checked at CONNECT anyway."""
        self._last = await self._backend.last_revocation_id()
        self._task = asyncio.create_task(self._run(), name="fleet-revocation-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._purges:
            await asyncio.wait(set(self._purges), timeout=_FINISH_WAIT)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll()
            except FleetError as exc:
                log.warning("revocation poll failed, retrying: %s", exc)

    async def poll(self) -> None:
        """Apply every event since the last poll."""
        while events := await self._backend.revocations_after(self._last):
            for event in events:
                self.apply(event)
                self._last = event.id or self._last

    def apply(self, event: RevocationEvent) -> None:
        owned: Callable[[Connection], bool]
        if event.serial:
            serial = event.serial
            targets = self._connections.with_serial(serial)
            reason = f"certificate {serial} {event.kind}"
            owned = lambda c: c.serial == serial  # noqa: E731
        elif event.device_id:
            identity = Identity("device", event.device_id)
            targets = self._connections.of_identity(identity)
            reason = f"device {event.device_id} {event.kind}"
            owned = lambda c: c.identity == identity  # noqa: E731
        else:
            return
        if event.kind == "revoked":
            for connection in targets:
                self._drop(connection, reason, event.device_id)
        task = asyncio.create_task(self._purge(targets, owned, reason, event))
        self._purges.add(task)
        task.add_done_callback(self._purges.discard)

    def _drop(self, connection: Connection, reason: str, device_id: str | None) -> None:
        connection.abort(reason, suppress_will=True)
        self._audit.disconnected(
            "broker.disconnect", reason=reason, serial=connection.serial, device_id=device_id,
            detail={"peer": connection.peer, "client_id": connection.client_id})

    async def _still_admitted(self, connection: Connection) -> bool:
        try:
            await self._backend.admit(connection.certificate())
        except (FleetError, OSError):  # OSError: the connection is already gone
            return False
        return True

    async def _purge(self, targets: list[Connection], owned: Callable[[Connection], bool],
                     reason: str, event: RevocationEvent) -> None:
        """Drop what a suspension still applies to, then purge the dropped identity's stored
        sessions once its connections are gone."""
        if event.kind != "revoked":
            before: list[Connection] = []
            since: list[Connection] = []
            for connection in targets:
                if connection.admitted_at is None:
                    continue  # the gate has yet to ask the registry; it reads the new state
                (before if connection.admitted_at < event.created_at else since).append(
                    connection)
            for connection in before:
                self._drop(connection, reason, event.device_id)
            verdicts = await asyncio.gather(*(self._still_admitted(c) for c in since))
            for connection, ok in zip(since, verdicts, strict=True):
                if not ok:
                    self._drop(connection, reason, event.device_id)
                    before.append(connection)
            if not before and since:
                return  # resumed before we looked: nothing to drop or purge
            targets = before
        if targets:
            await asyncio.wait({c.finished for c in targets}, timeout=_FINISH_WAIT)
        for client_id, (session, _) in list(self._broker.sessions.items()):
            owner = connection_of(session)
            if owner is not None and owned(owner):
                await self._broker.purge_session(client_id)
