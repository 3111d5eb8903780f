"""Group commit: concurrent operations share one write transaction and one commit.

Each operation is a *step*, a function of the shared session. The committer applies the steps
waiting in turn, in arrival order, each inside a savepoint: a step that refuses (a FleetError:
token used, CSR refused...) or loses a race (IntegrityError) rolls back its own writes only,
and its refusal is audited in the same transaction, while the others go on. The events the
steps record are appended at the end (fleet.registry.events.deferred), then one commit (one
fsync) makes the whole batch durable. Nothing is answered before that commit: each caller
waits for it; when it fails, every step of the batch fails with RegistryUnavailableError and
nothing of it was written. A batch holds at most ``max_steps`` steps, and the committer waits
at most ``max_wait`` after the first one arrives for more to join.

On PostgreSQL the replicas' batches take row locks in their own orders; a deadlock between two
of them aborts one, whose steps are then applied again in a new transaction (deadlocks are
retried, never answered).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from fleet.errors import ConflictError, FleetError, RegistryUnavailableError
from fleet.registry import events as events_db
from fleet.registry.engine import unavailable_as_error, write_session

T = TypeVar("T")
Step = Callable[[Session], T]
Refusal = Callable[[Session, FleetError], None]

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 3
_RETRIED_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


@dataclass(eq=False)
class _Pending(Generic[T]):
    step: Step[T]
    refused: Refusal
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None

    def outcome(self) -> T:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[no-any-return]


class GroupCommit:
    """One committer thread applying the steps of concurrent callers in shared transactions."""

    def __init__(self, engine: Engine, *, max_steps: int, max_wait: timedelta) -> None:
        if max_steps < 1:
            raise ValueError("a batch holds at least one step")
        self.engine = engine
        self.max_steps = max_steps
        self.max_wait = max_wait.total_seconds()
        self._waiting: deque[_Pending[Any]] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def apply(self, step: Step[T], *, refused: Refusal) -> T:
        """Apply *step* in the next shared transaction and return its value once that
        transaction committed; a FleetError it raises is handed to *refused* (in the same
        transaction, after the step's writes were rolled back) and raised here."""
        pending: _Pending[T] = _Pending(step, refused)
        with self._changed:
            if self._closed:
                raise RegistryUnavailableError("the registry is shutting down")
            self._waiting.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit",
                                                daemon=True)
                self._thread.start()
            self._changed.notify()
        return pending.outcome()

    def close(self) -> None:
        """Commit what is waiting, then stop the committer."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while batch := self._next_batch():
            self._commit(batch)

    def _next_batch(self) -> list[_Pending[Any]]:
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            deadline = time.monotonic() + self.max_wait
            while len(self._waiting) < self.max_steps and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return [self._waiting.popleft()
                    for _ in range(min(self.max_steps, len(self._waiting)))]

    def _commit(self, batch: list[_Pending[Any]]) -> None:
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                with unavailable_as_error():
                    try:
                        self._apply(batch)
                    except DBAPIError as exc:
                        if attempt < DEADLOCK_RETRIES and _sqlstate(exc) in _RETRIED_SQLSTATES:
                            log.debug("a shared transaction of %d steps deadlocked; applying "
                                      "it again", len(batch))
                            continue
                        raise
            except BaseException as exc:
                failure = exc if isinstance(exc, RegistryUnavailableError) else \
                    RegistryUnavailableError(f"the shared transaction failed: {exc}")
                if not isinstance(exc, RegistryUnavailableError):
                    log.warning("a shared transaction of %d steps failed: %r", len(batch), exc)
                for pending in batch:
                    pending.value, pending.error = None, failure
            for pending in batch:
                pending.done.set()
            return

    def _apply(self, batch: list[_Pending[Any]]) -> None:
        """Every step in one transaction, then one commit; the outcomes are set, not yet
        announced."""
        with write_session(self.engine) as session:
            events: list[events_db.Event] = []
            for pending in batch:
                pending.value = pending.error = None
                try:
                    with session.begin_nested(), events_db.deferred(session) as recorded:
                        pending.value = pending.step(session)
                    events += recorded
                except (FleetError, IntegrityError) as exc:
                    error = exc if isinstance(exc, FleetError) else conflict(exc)
                    pending.error = error
                    with events_db.deferred(session) as recorded:
                        pending.refused(session, error)
                    events += recorded
            events_db.append_events(session, events)
            session.commit()


def conflict(exc: IntegrityError) -> ConflictError:
    """The refusal of an operation that lost a race to a concurrent transaction."""
    first_line = str(exc.orig).splitlines()[0] if exc.orig is not None else ""
    return ConflictError(f"the registry changed concurrently; retry ({first_line})")


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
