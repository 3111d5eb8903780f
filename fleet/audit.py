"""Refusals that carry no verified identity, recorded as one audit event per source and interval.

A stranger can be refused as often as it can open connections or send requests; writing one
audit row each would let it fill the registry and drown the events that matter. Such refusals
(no certificate, a bad token, a malformed request, a failed handshake) are folded here into
one :class:`Aggregate` per action, actor and interval, where the actor names the edge and the
source address (``est:192.0.2.7``, ``broker:192.0.2.7``): how many, the first and last time,
and one sample reason (a caller may split them further by a subject, such as a topic). At
most *max_sources* aggregates are kept an interval; refusals from
further sources share one overflow aggregate per action (actor ``est:*``). Events that carry a
verified identity never come here: they are recorded one by one.

The digest is pure bookkeeping: the edges drain it every interval and hand the aggregates to
``Authority.record_refusals``. Those a flush cannot record while the registry is unavailable
are folded into the next interval's, so an outage loses no count.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from fleet.errors import FleetError
from fleet.registry.models import utcnow
from fleet.tasks import cancel

log = logging.getLogger(__name__)

OVERFLOW_SOURCE = "*"


def actor_of(edge: str, source: str) -> str:
    """The actor of refusals from *source* at *edge* (``est``, ``broker``)."""
    return f"{edge}:{source}"


@dataclass(slots=True)
class Aggregate:
    """Refusals of one action, by one actor (edge and source), within one interval."""

    action: str
    actor: str
    reason: str
    first: datetime
    last: datetime
    count: int = 1
    detail: dict[str, object] = field(default_factory=dict)
    subject: str | None = None


Flush = Callable[[list[Aggregate]], Awaitable[None]]


class RefusalDigest:
    """Folds unverified refusals into bounded aggregates; safe to use from several threads."""

    def __init__(self, *, interval: float, max_sources: int,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.interval = interval
        self.max_sources = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str, str | None], Aggregate] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, action: str, *, actor: str, reason: str, subject: str | None = None,
            **detail: object) -> None:
        """Count one refusal, apart from others of the same actor when *subject* (a topic,
        say) differs; the *detail* of an aggregate's first refusal is kept."""
        now = self._clock()
        self._fold(Aggregate(action=action, actor=actor, reason=reason, first=now, last=now,
                             detail=dict(detail), subject=subject))
        log.debug("refused %s for %s: %s", action, actor, reason)

    def _fold(self, new: Aggregate) -> None:
        """Count *new* into its aggregate of this interval (the overflow one past the bound)."""
        with self._lock:
            key = (new.action, new.actor, new.subject)
            aggregate = self._open.get(key)
            if aggregate is None and len(self._open) >= self.max_sources:
                new.actor = actor_of(new.actor.partition(":")[0], OVERFLOW_SOURCE)
                new.subject = None
                key = (new.action, new.actor, None)
                aggregate = self._open.get(key)
            if aggregate is None:
                self._open[key] = new
            else:
                aggregate.count += new.count
                aggregate.first = min(aggregate.first, new.first)
                aggregate.last = max(aggregate.last, new.last)

    def drain(self) -> list[Aggregate]:
        """The aggregates of the interval that ends now; the next interval starts empty."""
        with self._lock:
            drained, self._open = list(self._open.values()), {}
        return drained

    def start(self, flush: Flush) -> None:
        """Hand the aggregates to *flush* every interval, in the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(flush),
                                                            name="fleet-refusal-digest")

    async def stop(self, flush: Flush) -> None:
        """Stop the periodic flush and hand over what the current interval holds."""
        await cancel(self._task)
        self._task = None
        await self._flush(flush)

    async def _run(self, flush: Flush) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._flush(flush)

    async def _flush(self, flush: Flush) -> None:
        aggregates = self.drain()
        if not aggregates:
            return
        total = sum(a.count for a in aggregates)
        log.info("%d refusals without a verified identity from %d sources in the last "
                 "interval", total, len(aggregates))
        try:
            await flush(aggregates)
        except FleetError as exc:  # the registry is unavailable: they wait for the next flush
            for aggregate in aggregates:
                self._fold(aggregate)
            log.warning("could not record %d aggregated refusals, kept for the next "
                        "flush: %s", len(aggregates), exc.message)
        except Exception:  # the digest must outlive any failure
            log.warning("could not record %d aggregated refusals", len(aggregates),
                        exc_info=True)
