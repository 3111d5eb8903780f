"""Writing checkpoints: one writer per process, at the end of a CLI command that used the
authority, and every ``audit.checkpoint_interval`` plus once at shutdown in the services."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy.engine import Engine

from fleet.checkpoints import journal
from fleet.checkpoints.key import ensure_key
from fleet.checkpoints.record import MAX_WRITER, Checkpoint, sign
from fleet.registry import checkpoints as checkpoints_db
from fleet.registry import events as events_db
from fleet.registry import make_engine
from fleet.registry.engine import unavailable_as_error, write_session
from fleet.registry.models import utcnow
from fleet.settings import Settings

log = logging.getLogger(__name__)


def writer_name(role: str) -> str:
    """``<role>@<host>[<pid>]/<random>``: unique to this process, never reused."""
    suffix = f"[{os.getpid()}]/{secrets.token_hex(4)}"
    return f"{role}@{socket.gethostname()}"[:MAX_WRITER - len(suffix)] + suffix


class CheckpointWriter:
    """Checkpoints of the audit chain's head, numbered 1, 2, 3, ... under one writer name."""

    def __init__(self, *, settings: Settings, engine: Engine, role: str,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.name = writer_name(role)
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._journal = journal.journal_path(settings)
        self._seq = 0
        self._lock = threading.Lock()

    def write(self) -> Checkpoint | None:
        """Checkpoint the head into the registry and the file; None when the log is empty or
        its head has a checkpoint already."""
        with self._lock:
            key = ensure_key(self._settings)
            with journal.appending(self._journal, key, now=self._clock()) as append:
                checkpoint = self._commit(key, append.file)
                if checkpoint is not None:
                    append(checkpoint)
        if checkpoint is not None:
            log.debug("audit checkpoint %s at event %d", checkpoint.name, checkpoint.event_id)
        return checkpoint

    def _commit(self, key: bytes, file: str) -> Checkpoint | None:
        with unavailable_as_error(), write_session(self._engine) as session:
            head = events_db.audit_head(session=session)
            if head is None or checkpoints_db.checkpointed(session=session, event_id=head[0],
                                                           head=head[1]):
                return None
            checkpoint = sign(key, writer=self.name, seq=self._seq + 1, event_id=head[0],
                              head=head[1], at=self._clock(), file=file)
            checkpoints_db.add_checkpoint(session=session, checkpoint=checkpoint.row())
            session.commit()
        self._seq = checkpoint.seq
        return checkpoint

    def write_or_warn(self) -> None:
        """:meth:`write`, for a service: a failure is logged, never raised."""
        try:
            self.write()
        except Exception as exc:  # the service must outlive a registry outage or a full disk
            log.warning("audit checkpoint not written: %s", exc)


@contextmanager
def periodic(settings: Settings, *, role: str) -> Iterator[CheckpointWriter]:
    """A checkpoint every ``audit.checkpoint_interval`` while the block runs, and one more
    when it ends (after the service in it has stopped appending)."""
    engine = make_engine(settings.effective_database_url, pool_size=1)
    writer = CheckpointWriter(settings=settings, engine=engine, role=role)
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(settings.audit_checkpoint_interval.total_seconds()):
            writer.write_or_warn()

    thread = threading.Thread(target=run, name="fleet-audit-checkpoints", daemon=True)
    thread.start()
    try:
        yield writer
    finally:
        stop.set()
        thread.join()
        writer.write_or_warn()
        engine.dispose()
