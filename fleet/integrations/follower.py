"""Following the registry's revocation events outside Fleet's broker: the hooks that act on
other brokers (``fleet serve emqx-kick``, the RabbitMQ hook) and ``fleet crl --watch``.

A :class:`RevocationFollower` starts after the newest event (or after an id it is given),
polls every ``broker.revocation_poll_interval`` and at once when PostgreSQL announces an event
(fleet.registry.notify), and hands every new event, in id order, to its handler. The position
moves past an event once the handler returns, so a handler that waits (a full queue) holds
the follower there and nothing is skipped. A poll or handler that raises is logged and the
same event is handled again on the next poll: the registry comes back later, and a follower
never stops following.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fleet.authority.admission import AdmissionPolicy
from fleet.errors import FleetError
from fleet.registry.models import RevocationEvent
from fleet.registry.notify import Wakeup
from fleet.tasks import cancel

log = logging.getLogger(__name__)

Handler = Callable[[RevocationEvent], Awaitable[None]]


class RevocationFollower:
    """Hands each new revocation event to *handle*; *name* says who follows, in the logs."""

    def __init__(self, *, authority: AdmissionPolicy, handle: Handler, name: str,
                 interval: float | None = None) -> None:
        self._authority = authority
        self._handle = handle
        self._name = name
        self._interval = (interval if interval is not None else
                          authority.settings.revocation_poll_interval.total_seconds())
        self.wakeup = Wakeup.of(authority.engine, name=name,
                                listen=authority.settings.revocation_push)
        self.last = 0
        """The id of the last event handled."""
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, after: int | None = None) -> None:
        """Follow the events after *after* (default: the newest one now)."""
        self.last = after if after is not None else \
            await asyncio.to_thread(self._authority.last_revocation_id)
        self.wakeup.start()
        self._task = asyncio.create_task(self._follow(), name=f"{self._name}-follow")

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
        await self.wakeup.close()

    async def _follow(self) -> None:
        while True:
            await self.wakeup.wait(self._interval)
            try:
                await self.poll()
            except Exception as exc:  # the registry is back later; never stop following
                log.warning("%s: revocation poll failed, retrying: %s", self._name, exc,
                            exc_info=not isinstance(exc, FleetError))

    async def poll(self) -> None:
        """Handle every event since the last one handled."""
        while events := await asyncio.to_thread(self._authority.revocations_after, self.last):
            for event in events:
                await self._handle(event)
                self.last = event.id or self.last
