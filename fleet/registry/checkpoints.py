"""Checkpoint rows: keyed records of the audit chain's head (see fleet.checkpoints)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from fleet.registry.models import AuditCheckpoint


def add_checkpoint(*, session: Session, checkpoint: AuditCheckpoint) -> AuditCheckpoint:
    session.add(checkpoint)
    session.flush()
    return checkpoint


def checkpointed(*, session: Session, event_id: int, head: str) -> bool:
    """Whether a checkpoint of exactly this head (event id and digest) exists already."""
    statement = select(AuditCheckpoint.id).where(
        AuditCheckpoint.event_id == event_id, AuditCheckpoint.head == head).limit(1)
    return session.exec(statement).first() is not None


def list_checkpoints(*, session: Session) -> Sequence[AuditCheckpoint]:
    """Every checkpoint row, in the order they were written."""
    return session.exec(select(AuditCheckpoint).order_by(col(AuditCheckpoint.id))).all()
