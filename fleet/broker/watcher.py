"""The revocation watcher: drops live connections of revoked or suspended identities and
purges what they left behind.

Polls the registry's revocation events every ``revocation_poll_interval``. An event naming a
certificate serial drops every connection that presented that certificate; an event naming
only a device (device revoked or suspended) drops every connection of that device. The
dropped identity's will is not published. Reconnects are refused by the gate, which asks the
registry on every CONNECT; a resumed device is admitted again.

Once the dropped connections are gone (so nothing they sent is still being routed), the
identity's leftovers are purged, and one ``broker.purge`` event records the counts:

- a device revoked or suspended: its stored session (subscriptions, queued and unreleased
  messages, will) and every retained message it set (fleet.broker.quotas.RetainedLedger
  knows which, wills retained included), so a new subscriber no longer receives them and a
  resumed device starts clean;
- one certificate revoked: the sessions last held through that certificate, but not the
  device's retained messages. They belong to the device, which may still be active with
  another certificate (after a rekey, revoking the old one must not wipe its state);
  revoking or suspending the device removes them.

Revocation is final, so its connections are dropped at once. A suspension can be lifted
before the watcher sees it; a connection admitted after the resume must survive the late
event. So a connection admitted before the suspension was recorded is dropped at once, and
one admitted since is asked about again (as at CONNECT) and dropped unless the registry
admits it now (an unreachable registry drops it too). If one is still admitted, the device
is back and keeps its session and retained messages. Any other event (a certificate
superseded by a renewal, usable for its grace) has each connection asked about again, and
purges nothing; a superseded certificate's connections still admitted are dropped when its
grace (``certificates.superseded_grace``) ends. A connection still waiting for its admission
is left to the gate, which reads the current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable

from fleet.broker.backend import Audit, Backend
from fleet.broker.connection import Connection, Connections, connection_of
from fleet.broker.engine import FleetBroker
from fleet.errors import FleetError
from fleet.pki import Identity
from fleet.registry.models import RevocationEvent, utcnow

log = logging.getLogger(__name__)


def _cancel(timer: asyncio.TimerHandle, _finished: object) -> None:
    timer.cancel()

_FINISH_WAIT = 5.0
SUPERSEDED = "superseded"


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
        if event.serial:
            targets = self._connections.with_serial(event.serial)
            reason = f"certificate {event.serial} {event.kind}"
        elif event.device_id:
            targets = self._connections.of_identity(Identity("device", event.device_id))
            reason = f"device {event.device_id} {event.kind}"
        else:
            return
        wills = self._drop(targets, reason, event) if event.kind == "revoked" else 0
        task = asyncio.create_task(self._purge(targets, reason, event, wills))
        self._purges.add(task)
        task.add_done_callback(self._purges.discard)

    def _drop(self, connections: list[Connection], reason: str, event: RevocationEvent) -> int:
        """Drop *connections* without their wills; returns how many wills were withheld."""
        wills = 0
        for connection in connections:
            session = connection.session
            wills += session is not None and bool(session.will_flag)
            connection.abort(reason, suppress_will=True)
            self._audit.disconnected(
                "broker.disconnect", reason=reason, serial=connection.serial,
                device_id=event.device_id,
                detail={"peer": connection.peer, "client_id": connection.client_id})
        return wills

    def _drop_at_cutoff(self, connections: list[Connection], event: RevocationEvent) -> None:
        """Connections of a superseded certificate still in its grace: dropped when it ends."""
        cutoff = self._backend.authority.superseded_cutoff(event.created_at)
        delay = max(0.0, (cutoff - utcnow()).total_seconds())
        reason = f"certificate {event.serial} superseded: its grace ended"
        loop = asyncio.get_running_loop()
        for connection in connections:
            timer = loop.call_later(delay, self._drop, [connection], reason, event)
            connection.finished.add_done_callback(functools.partial(_cancel, timer))

    async def _still_admitted(self, connection: Connection) -> bool:
        try:
            await self._backend.admit(connection.certificate())
        except (FleetError, OSError):  # OSError: the connection is already gone
            return False
        return True

    async def _purge(self, targets: list[Connection], reason: str, event: RevocationEvent,
                     wills: int) -> None:
        """Drop what a suspension (or another non-final event) still applies to; once the
        dropped connections are gone (nothing they sent is still being routed), purge what a
        revoked or suspended identity left behind."""
        if event.kind != "revoked":
            suspended = event.kind == "suspended"
            before: list[Connection] = []
            since: list[Connection] = []
            for connection in targets:
                if connection.admitted_at is None:
                    continue  # the gate has yet to ask the registry; it reads the new state
                predates = suspended and connection.admitted_at < event.created_at
                (before if predates else since).append(connection)
            wills += self._drop(before, reason, event)
            verdicts = await asyncio.gather(*(self._still_admitted(c) for c in since))
            failed = [c for c, ok in zip(since, verdicts, strict=True) if not ok]
            wills += self._drop(failed, reason, event)
            if event.kind == SUPERSEDED:
                self._drop_at_cutoff([c for c in since if c not in failed], event)
            if not suspended or len(failed) < len(since):
                return  # still active (renewed; or resumed, and back): it keeps its state
            targets = before + failed
        if targets:
            await asyncio.wait({c.finished for c in targets}, timeout=_FINISH_WAIT)
        sessions = queued = 0
        for client_id in self._stored_sessions(event):
            held = await self._broker.purge_session(client_id)
            if held is not None:
                sessions, queued = sessions + 1, queued + held
        retained = self._broker.purge_retained(event.device_id) \
            if event.device_id and not event.serial else 0
        self._audit.disconnected(
            "broker.purge", reason=reason, device_id=event.device_id, serial=event.serial,
            detail={"sessions": sessions, "queued": queued, "retained": retained,
                    "wills": wills})

    def _stored_sessions(self, event: RevocationEvent) -> list[str]:
        """The client ids of the sessions *event* purges: those its identity last held, and
        no live connection holds (one admitted since, as after a resume, keeps its own)."""
        sessions = self._broker.sessions
        owned: Callable[[Connection], bool]
        if event.serial:
            serial = event.serial
            candidates = list(sessions)  # a service's certificate may hold many client ids
            owned = lambda c: c.serial == serial  # noqa: E731
        else:
            device_id = event.device_id
            candidates = [device_id] if device_id in sessions else []  # its one client id
            owned = lambda c: c.device_id == device_id  # noqa: E731
        return [client_id for client_id in candidates
                if (owner := connection_of(sessions[client_id][0])) is not None
                and owner.closing and owned(owner)]
