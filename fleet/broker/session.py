"""What a session holds besides amqtt's own state (fleet.broker.amqtt_adapter.FleetSession):
the inbound QoS 2 messages it has not released (:class:`Unreleased`), small queues
(:class:`Mailbox`), and when a persistent session whose client stays away expires
(:class:`Away`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from fleet.broker.quotas import Budget, weight

if TYPE_CHECKING:
    from fleet.broker.amqtt_adapter import FleetSession

T = TypeVar("T")


class Mailbox(Generic[T]):
    """An unbounded queue with one consumer, for what amqtt keeps in ``asyncio.Queue`` objects
    per client: the messages queued for an offline session and the SUBSCRIBE / UNSUBSCRIBE
    packets waiting for the broker. An ``asyncio.Queue`` holds four deques and an Event (about
    3 KiB) for a handful of items in a session's life; this holds a list and, while its
    consumer waits, one future.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def notify(self, waiter: asyncio.Future[None] | None) -> None:
        """Resolve *waiter* with the next put (None: no longer), as :meth:`get` waits itself:
        how a consumer waiting for several things at once waits here without a task."""
        self._waiter = waiter

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        """What it holds, oldest first (left in place)."""
        return iter(list(self._items))


class Unreleased:
    """Inbound QoS 2 messages received (PUBREC sent) and not yet released by PUBREL (4.3.3,
    method A), oldest first; each is discarded when its deadline passes, whether or not a
    connection holds the session, and its budget freed.

    Every message gets the same timeout, so deadlines follow insertion order: one timer, for
    the oldest message, serves them all.
    """

    __slots__ = ("_budget", "_messages", "_timer")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._messages: dict[int, tuple[float, str, bytes, bool]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __contains__(self, packet_id: object) -> bool:
        return packet_id in self._messages

    def __len__(self) -> int:
        return len(self._messages)

    def hold(self, packet_id: int, topic: str, data: bytes, retain: bool, *,
             timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._messages[packet_id] = (loop.time() + timeout, topic, data, retain)
        self._budget.add(weight(topic, data))
        if self._timer is None:
            self._timer = loop.call_later(timeout, self._expire)

    def held(self) -> list[tuple[int, float, str, bytes, bool]]:
        """(packet id, seconds left before it is discarded, topic, payload, retain) of each
        message, oldest first."""
        now = asyncio.get_running_loop().time()
        return [(packet_id, deadline - now, topic, data, retain)
                for packet_id, (deadline, topic, data, retain) in self._messages.items()]

    def release(self, packet_id: int) -> tuple[str, bytes, bool] | None:
        """The message *packet_id* (topic, payload, retain), now released; None if unknown."""
        held = self._messages.pop(packet_id, None)
        if held is None:
            return None
        _, topic, data, retain = held
        self._budget.remove(weight(topic, data))
        return topic, data, retain

    def clear(self) -> None:
        for _, topic, data, _retain in self._messages.values():
            self._budget.remove(weight(topic, data))
        self._messages.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for packet_id, (deadline, _, _, _) in list(self._messages.items()):
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            self.release(packet_id)


class Away:
    """Persistent sessions whose client is away, in the order they left; each is handed to
    *expire* once its client has been away for *after* seconds (``broker.session_expiry``).

    Every session gets the same time, so deadlines follow the order clients left: one
    timer, for the oldest, serves them all, and each sweep costs what it discards.
    """

    __slots__ = ("_after", "_expire", "_sessions", "_timer")

    def __init__(self, *, after: float, expire: Callable[[str, FleetSession], None]) -> None:
        self._after = after
        self._expire = expire
        self._sessions: OrderedDict[str, tuple[float, FleetSession]] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None

    def left(self, client_id: str, session: FleetSession, *, away_for: float = 0.0) -> None:
        """The client of *session* went away (*away_for* seconds ago: a session restored
        after a restart; those are handed in longest away first): its session expires once
        the period has passed."""
        loop = asyncio.get_running_loop()
        self._sessions.pop(client_id, None)
        deadline = loop.time() + self._after - away_for
        self._sessions[client_id] = (deadline, session)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._sweep)

    def away_for(self, client_id: str) -> float:
        """Seconds since the client of *client_id* went away (0 if it is not away)."""
        held = self._sessions.get(client_id)
        if held is None:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - (held[0] - self._after))

    def back(self, client_id: str) -> None:
        """*client_id* connected again, or its session is gone: it no longer expires."""
        self._sessions.pop(client_id, None)

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._sessions:
            client_id, (deadline, session) = next(iter(self._sessions.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._sweep)
                return
            del self._sessions[client_id]
            self._expire(client_id, session)
