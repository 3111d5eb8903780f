"""``fleet crl --watch``: a CRL file kept current for a relying party that reads it from disk
(Mosquitto's ``crlfile``), and the process that reads it told to read it again.

The file is rewritten whole (fleet.files.write_readable: 0644 whatever the umask, synced,
renamed into place, so a reader sees the old CRLs or the new, never a mix) after revocation
events (fleet.integrations.follower: pushed on PostgreSQL, polled on SQLite; a burst of events
makes one rewrite), and without any event before the CRLs run out or a superseded
certificate's grace ends (the CRL lists it from then on): at the earlier of half-way to the
CRLs' nextUpdate and the next end of a grace. A rewrite that fails (the registry unavailable)
is tried again every :data:`RETRY_DELAY` until it succeeds.

After each rewrite the target process, if one is named, gets SIGHUP: Mosquitto then reads its
CRL again (it checks the CRL in new TLS handshakes only). The process is held by a pidfd, so
the signal reaches that very process and never another one that got its PID later. When it
exits, the watch stops with an error (exit status 1): a CRL file that no running broker
reads again is not what the operator asked for, and the broker started again has a new PID.
Run both under one supervisor (with systemd: a unit for the watch with
``BindsTo=mosquitto.service`` and ``Restart=on-failure``, taking the PID from
``systemctl show --property MainPID --value mosquitto``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from fleet.authority import Authority, SignedCrl
from fleet.errors import ConflictError, FleetError, NotFoundError
from fleet.files import write_readable
from fleet.integrations.follower import RevocationFollower
from fleet.registry import certificates as certs_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import RevocationEvent
from fleet.tasks import cancel

log = logging.getLogger(__name__)

RETRY_DELAY = 1.0
"""Seconds between attempts of a rewrite that failed."""
GRACE_MARGIN = timedelta(seconds=1)
"""After the end of a grace: the CRL built then lists that certificate."""

Render = Callable[[], tuple[bytes, Sequence[SignedCrl]]]
"""Builds the file's content (blocking) and says which CRLs it holds."""


class TargetExitedError(FleetError):
    """The process the watch signals is gone."""


class Target:
    """The process told to read the CRL again (SIGHUP), held by a pidfd."""

    def __init__(self, pid: int) -> None:
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise NotFoundError(f"no process {pid} to signal") from None
        try:
            signal.pidfd_send_signal(self._fd, 0)
        except PermissionError:
            os.close(self._fd)
            raise ConflictError(f"not permitted to signal process {pid}") from None
        self.pid = pid

    def hangup(self) -> bool:
        """Send SIGHUP; False when the process has exited."""
        try:
            signal.pidfd_send_signal(self._fd, signal.SIGHUP)
        except ProcessLookupError:
            return False
        return True

    async def exited(self) -> None:
        """Return when the process exits (its pidfd becomes readable)."""
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(self._fd, readable)
        try:
            await gone
        finally:
            loop.remove_reader(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class CrlWatch:
    """Keeps *out* holding what *render* builds, and signals *target* after each rewrite."""

    def __init__(self, *, authority: Authority, out: Path, render: Render,
                 target: Target | None, report: Callable[[str], None]) -> None:
        self._authority = authority
        self._out = out
        self._render = render
        self._target = target
        self._report = report
        self._changed = asyncio.Event()
        self.refresh_at: datetime | None = None
        """When the file is rewritten even without a revocation event."""
        self.rewrites = 0

    def rewrite(self) -> None:
        """Write the current CRLs to the file and signal the target (blocking)."""
        data, signed = self._render()
        write_readable(self._out, data)
        self.rewrites += 1
        now = self._authority.clock()
        halfway = min(s.crl.last_update_utc + (s.crl.next_update_utc - s.crl.last_update_utc) / 2
                      for s in signed if s.crl.next_update_utc is not None)
        with unavailable_as_error(), new_session(self._authority.engine) as session:
            cutoff = certs_db.next_supersession_cutoff(
                session=session, now=now, grace=self._authority.settings.superseded_grace)
        self.refresh_at = min(halfway, cutoff + GRACE_MARGIN) if cutoff else halfway
        counts = ", ".join(f"issuing CA {s.issuing.number}: {len(list(s.crl))} revoked"
                           for s in signed)
        signalled = ""
        if self._target is not None:
            if not self._target.hangup():
                raise TargetExitedError(f"process {self._target.pid} exited")
            signalled = f"; sent SIGHUP to process {self._target.pid}"
        self._report(f"wrote {len(signed)} CRL(s) to {self._out} ({counts}){signalled}")

    async def follow(self, *, after: int) -> None:
        """Rewrite on every revocation event after *after* and when the CRLs need it; returns
        only by raising (TargetExitedError when the target exits)."""
        follower = RevocationFollower(authority=self._authority, handle=self._event,
                                      name="CRL watch")
        await follower.start(after=after)
        exited = asyncio.create_task(self._target.exited()) if self._target else None
        try:
            while True:
                await self._next(exited)
                try:
                    await asyncio.to_thread(self.rewrite)
                except TargetExitedError:
                    raise
                except FleetError as exc:
                    log.warning("CRL rewrite failed, retrying in %gs: %s", RETRY_DELAY, exc)
                    self.refresh_at = self._authority.clock() + timedelta(seconds=RETRY_DELAY)
        finally:
            await cancel(exited)
            await follower.close()

    async def _event(self, _event: RevocationEvent) -> None:
        self._changed.set()

    async def _next(self, exited: asyncio.Task[None] | None) -> None:
        """Until a revocation event, the refresh time or the target's exit (which raises)."""
        assert self.refresh_at is not None, "rewrite() first"
        timeout = max(0.0, (self.refresh_at - self._authority.clock()).total_seconds())
        changed = asyncio.create_task(self._changed.wait())
        waiting = {changed} if exited is None else {changed, exited}
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        changed.cancel()
        if exited is not None and exited.done():
            assert self._target is not None
            raise TargetExitedError(f"process {self._target.pid} exited")
        self._changed.clear()
