"""The revocation watcher: drops live connections of revoked or suspended identities and
purges what they left behind.

Polls the registry's revocation events every ``revocation_poll_interval``, and at once when
PostgreSQL announces one (fleet.registry.notify: the announcement wakes the poll, which reads
the events; only a successful poll confirms revocation state). An event naming a
certificate serial drops every connection that presented that certificate; an event naming
only a device (device revoked or suspended) drops every connection of that device. The
dropped identity's will is not published. Reconnects are refused by the gate: the watcher
keeps its admission cache (fleet.broker.admission_cache) current, removing what an event names
before it drops that event's connections, and the gate asks the registry about every
certificate the cache does not answer for; a resumed device is admitted again.

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
grace (``certificates.superseded_grace``) ends. A connection whose admission has not started
(its CONNECT not read yet), whatever the event, is left to the gate, which reads the current
state and answers with a CONNACK. Each drop for a revocation or suspension is timed from the
event's record in the registry (``fleet_broker_revocation_drop_seconds``).

The watcher never stops on an error. A poll that raises anything (an unreachable registry,
SQLite's "database is locked", a bug in applying an event) is logged and counted
(``fleet_broker_revocation_poll_failures_total``) and retried after a backoff that starts at
the poll interval and doubles up to ``MAX_BACKOFF``, back to the interval after a success.
The position in the event feed moves past an event only once it is applied, so an event
whose handling raised is applied again on the next poll, never skipped. An event that keeps
failing holds the watcher there: no poll succeeds, revocation state stays unconfirmed and,
after ``broker.revocation_max_staleness``, the broker refuses new connections (CONNACK 0x03,
/healthz 503) until the event applies. A restart starts the watcher after the newest event
again; the gate then asks the registry about every reconnecting client, so the revocation is
enforced either way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from datetime import datetime

from fleet.broker.admission_cache import AdmissionCache
from fleet.broker.backend import Audit, Backend
from fleet.broker.connection import Connection, Connections, connection_of
from fleet.broker.engine import FleetBroker
from fleet.broker.health import BrokerMetrics, Health
from fleet.errors import FleetError
from fleet.pki import Identity
from fleet.registry.models import RevocationEvent, utcnow
from fleet.registry.notify import Wakeup
from fleet.tasks import cancel

log = logging.getLogger(__name__)


def _cancel(timer: asyncio.TimerHandle, _finished: object) -> None:
    timer.cancel()

_FINISH_WAIT = 5.0
SUPERSEDED = "superseded"
MAX_BACKOFF = 2.0
"""Seconds between retries of a failing poll, at most (unless the poll interval is longer)."""


class RevocationWatcher:
    def __init__(self, *, backend: Backend, audit: Audit, connections: Connections,
                 broker: FleetBroker, interval: float, metrics: BrokerMetrics) -> None:
        self._backend = backend
        self._authority = backend.authority
        self._audit = audit
        self._connections = connections
        self._broker = broker
        self._interval = interval
        self._metrics = metrics
        self._last = 0
        self._task: asyncio.Task[None] | None = None
        self._purges: set[asyncio.Task[None]] = set()
        self.confirmed_at = self._authority.clock()
        """When revocation state was last confirmed: the start of the last successful poll."""
        self.failures = 0
        """Polls failed in a row since the last successful one."""
        self._last_error: str | None = None
        self.wakeup = Wakeup.of(self._authority.engine, name="broker revocation watcher",
                                listen=self._authority.settings.revocation_push)
        self.admissions = AdmissionCache(read=self._authority.admission_facts,
                                         confirmed_at=self._confirmed_unless_failing,
                                         clock=self._authority.clock)
        """The gate's admission cache, current as of the last successful poll."""

    async def start(self) -> None:
        """Start after the newest event: earlier ones are checked at CONNECT anyway."""
        started = self._authority.clock()
        self._last = await self._backend.last_revocation_id()
        self.confirmed_at = started
        self.wakeup.start()
        self._task = asyncio.create_task(self._run(), name="fleet-revocation-watcher")

    def _confirmed_unless_failing(self) -> datetime | None:
        """When revocation state was last confirmed (None while the latest poll failed)."""
        return None if self.failures else self.confirmed_at

    def poll_age(self) -> float:
        """Seconds since revocation state was last confirmed."""
        return (self._authority.clock() - self.confirmed_at).total_seconds()

    def health(self) -> Health:
        problem = self._authority.revocation_state_problem(self.confirmed_at,
                                                           self._authority.clock())
        return Health(status="ok" if problem is None else "stale",
                      revocation_poll_age_seconds=round(self.poll_age(), 3),
                      revocation_max_staleness_seconds=self._authority.settings
                      .revocation_max_staleness.total_seconds(),
                      revocation_poll_failures=self.failures, last_poll_error=self._last_error,
                      detail=problem)

    async def stop(self) -> None:
        await cancel(self._task)
        await self.wakeup.close()
        if self._purges:
            await asyncio.wait(set(self._purges), timeout=_FINISH_WAIT)

    async def _run(self) -> None:
        delay = self._interval
        while True:
            await self.wakeup.wait(delay)
            started = self._authority.clock()
            try:
                await self.poll()
            except Exception as exc:  # anything but cancellation: retried, never fatal
                delay = self._failed(exc)
                continue
            if self.failures:
                log.warning("revocation poll succeeded again after %d failures; revocation "
                            "state was unconfirmed for %.1fs", self.failures,
                            (started - self.confirmed_at).total_seconds())
            self.confirmed_at, self.failures, self._last_error = started, 0, None
            delay = self._interval

    def _failed(self, error: Exception) -> float:
        """Log and count a failed poll; the delay before the next attempt."""
        self.failures += 1
        self._last_error = f"{type(error).__name__}: {error}"
        self._metrics.poll_failed(error)
        delay = max(self._interval, min(self._interval * 2.0 ** (self.failures - 1), MAX_BACKOFF))
        log.warning("revocation poll failed (%d in a row, revocation state unconfirmed for "
                    "%.1fs), retrying in %gs: %s", self.failures, self.poll_age(), delay,
                    self._last_error,
                    exc_info=self.failures == 1 and not isinstance(error, FleetError))
        return delay

    async def poll(self) -> None:
        """Apply every event since the last poll. The position moves past an event only
        once it is applied: one whose handling raises is the first one of the next poll."""
        while events := await self._backend.revocations_after(self._last):
            for event in events:
                self.apply(event)
                self._last = event.id or self._last

    def apply(self, event: RevocationEvent) -> None:
        self.admissions.invalidate(event)  # first: a reconnect after the drop is read afresh
        if event.serial:
            targets = self._connections.with_serial(event.serial)
            reason = f"certificate {event.serial} {event.kind}"
        elif event.device_id:
            targets = self._connections.of_identity(Identity("device", event.device_id))
            reason = f"device {event.device_id} {event.kind}"
        else:
            return
        # One whose admission has not started is left to the gate: it asks the registry
        # after this event was recorded, and refuses with a CONNACK.
        targets = [c for c in targets if c.admitted_at is not None]
        wills = self._drop(targets, reason, event) if event.kind == "revoked" else 0
        task = asyncio.create_task(self._purge(targets, reason, event, wills))
        self._purges.add(task)
        task.add_done_callback(self._purged)

    def _purged(self, task: asyncio.Task[None]) -> None:
        self._purges.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("purge after a revocation event failed", exc_info=error)

    def _drop(self, connections: list[Connection], reason: str, event: RevocationEvent) -> int:
        """Drop *connections* without their wills; returns how many wills were withheld."""
        wills = 0
        timed = event.kind != SUPERSEDED  # a superseded certificate is dropped when its grace ends
        self._metrics.dropped(event.kind, len(connections), latency=(
            utcnow() - event.created_at).total_seconds() if timed else None)
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
                assert connection.admitted_at is not None
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
