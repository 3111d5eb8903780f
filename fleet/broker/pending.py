"""Connections that have not yet earned their place: still in the TLS handshake, or not yet
past CONNECT.

A stranger can open such connections for the cost of a TCP handshake and a replayed
ClientHello, and leave them hanging. They hold no CPU while they wait, only a slot, so the
bound is on slots: at most *per_source* for one source address and *limit* in all, and when a
new one arrives over either bound, the oldest one (of that source, or overall) is closed to
make room. A device finishes its handshake in milliseconds and is never the oldest for long;
a flood pushes out only its own stalled connections, and a flood from many addresses only the
oldest stalled ones, whatever its rate.
"""

from __future__ import annotations

from collections.abc import Callable


class Pending:
    """One connection not yet admitted; *evict* closes it."""

    __slots__ = ("evict", "source")

    def __init__(self, source: str, evict: Callable[[str], None]) -> None:
        self.source = source
        self.evict = evict


class PendingConnections:
    """Admission-pending connections in arrival order, capped in total and per source."""

    def __init__(self, *, limit: int, per_source: int) -> None:
        self.limit = limit
        self.per_source = per_source
        # dicts keep insertion order: the first key is the oldest
        self._all: dict[Pending, None] = {}
        self._by_source: dict[str, dict[Pending, None]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def count(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def add(self, source: str, evict: Callable[[str], None]) -> Pending:
        """Track a new connection from *source*, evicting the oldest ones it displaces."""
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.per_source:
            self._evict(next(iter(mine)), f"more than {self.per_source} connections from "
                                          f"{source} pending admission")
        if len(self._all) >= self.limit:
            self._evict(next(iter(self._all)), f"more than {self.limit} connections pending "
                                               "admission")
        entry = Pending(source, evict)
        self._all[entry] = None
        self._by_source.setdefault(source, {})[entry] = None
        return entry

    def evict_oldest(self, reason: str) -> bool:
        """Close the oldest pending connection to make room; False when there is none."""
        if not self._all:
            return False
        self._evict(next(iter(self._all)), reason)
        return True

    def settle(self, entry: Pending) -> None:
        """*entry* was admitted or has ended; it can no longer be evicted (idempotent)."""
        if entry in self._all:
            del self._all[entry]
            mine = self._by_source[entry.source]
            del mine[entry]
            if not mine:
                del self._by_source[entry.source]

    def _evict(self, entry: Pending, reason: str) -> None:
        self.settle(entry)
        entry.evict(reason)
