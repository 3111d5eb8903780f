"""The admission cache: the registry facts of certificates the broker admitted, kept current by
the revocation events, so that a device's next CONNECT reads nothing from the registry.

The gate's registry check (fleet.authority.admission) decides on a certificate's facts: its
status, fingerprint, notAfter and superseded time, its device's status and group. Each of
them changes only with a revocation event (a certificate revoked or superseded, a device
revoked or suspended), except a device's resume, which makes a refused device admissible
again. So the cache keeps only facts that admit (certificate active or superseded, device
active), and the revocation watcher drops the entries an event names, before it drops the
event's connections (:meth:`AdmissionCache.invalidate`).

An entry is trusted only once a poll of the revocation events that started after the entry
was read has succeeded (every event committed before that poll started has then been applied,
and any that named this certificate or its device removed the entry), and only while the
watcher's latest poll succeeded: from the first failed poll (a registry out of reach) every
CONNECT asks the registry again, as without the cache. A read that an event
overtook while it was in flight (the event applied between its start and its end) is not
kept. A cache answer is therefore as current as the watcher's last successful poll, the same
state that decides whether the live connections stay; the gate's revocation state check
refuses every CONNECT, cached or not, when that poll is older than
``broker.revocation_max_staleness``. A revocation committed after that poll lets a CONNECT in
until the next poll applies it, which drops that connection with the others, and the next
CONNECT reads the registry again.

At most ``MAX_ENTRIES`` entries are kept, the oldest dropped first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Row

from fleet.authority.admission import FactsLookup
from fleet.registry.models import CertificateStatus, DeviceStatus, RevocationEvent

MAX_ENTRIES = 100_000
"""Certificates whose facts are kept, at most (a few hundred bytes each)."""

_ADMITTING = frozenset({CertificateStatus.ACTIVE, CertificateStatus.SUPERSEDED})


@dataclass(frozen=True, slots=True)
class _Entry:
    facts: Row[Any]
    read_at: datetime


class AdmissionCache:
    """Registry facts by certificate serial. :meth:`hit` and :meth:`invalidate` run on the
    event loop; :meth:`read` on any thread (it reads the registry)."""

    def __init__(self, *, read: FactsLookup, confirmed_at: Callable[[], datetime | None],
                 clock: Callable[[], datetime], max_entries: int = MAX_ENTRIES) -> None:
        self._read = read
        self._confirmed_at = confirmed_at
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._by_device: dict[str, list[str]] = {}
        """The serials kept of each device (a list: one or two, and a third the size of a
        set)."""
        self._lock = threading.Lock()
        self._epoch = 0
        """Counts invalidations: a read that saw it change while in flight is not kept."""

    def __len__(self) -> int:
        return len(self._entries)

    def hit(self, serial: str) -> Row[Any] | None:
        """The facts of *serial* if an entry is trusted now (None: ask the registry)."""
        entry = self._entries.get(serial)
        confirmed_at = self._confirmed_at()
        if entry is None or confirmed_at is None or entry.read_at > confirmed_at:
            return None
        return entry.facts

    def read(self, serial: str) -> Row[Any] | None:
        """Read the facts of *serial* from the registry, and keep them if they admit and no
        revocation event was applied meanwhile."""
        with self._lock:
            epoch = self._epoch
        read_at = self._clock()
        facts = self._read(serial)
        if facts is not None and _admits(facts):
            with self._lock:
                if self._epoch == epoch:
                    self._keep(serial, _Entry(facts, read_at))
        return facts

    def invalidate(self, event: RevocationEvent) -> None:
        """Forget what *event* may have changed: its certificate, or every certificate of its
        device (an event naming neither: everything)."""
        with self._lock:
            self._epoch += 1
            if event.serial:
                self._forget(event.serial)
            if event.device_id:
                for serial in self._by_device.pop(event.device_id, []):
                    self._forget(serial)
            if not event.serial and not event.device_id:
                self._entries.clear()
                self._by_device.clear()

    def _keep(self, serial: str, entry: _Entry) -> None:
        self._forget(serial)
        if len(self._entries) >= self._max_entries:
            self._forget(next(iter(self._entries)))
        self._entries[serial] = entry
        if entry.facts.device_id:
            self._by_device.setdefault(entry.facts.device_id, []).append(serial)

    def _forget(self, serial: str) -> None:
        entry = self._entries.pop(serial, None)
        device_id = entry.facts.device_id if entry is not None else None
        if device_id:
            serials = self._by_device.get(device_id)
            if serials is not None and serial in serials:
                serials.remove(serial)
                if not serials:
                    del self._by_device[device_id]


def _admits(facts: Row[Any]) -> bool:
    """Facts the registry check would admit on (a refusal is never kept: a suspended
    device's resume records no event)."""
    return facts.status in _ADMITTING and (facts.device_id is None
                                           or facts.device_status == DeviceStatus.ACTIVE)
