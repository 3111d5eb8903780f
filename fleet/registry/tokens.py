"""Bootstrap token rows. Consuming a use is one conditional UPDATE, safe under concurrency."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, exists
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select, update

from fleet.registry.engine import execute
from fleet.registry.models import BootstrapToken, Certificate, Group


def add_tokens(*, session: Session, tokens: Sequence[BootstrapToken]) -> None:
    session.add_all(tokens)
    session.flush()


_TABLE = BootstrapToken.__table__  # type: ignore[attr-defined]
_SELECT = sa_select(_TABLE).where(_TABLE.c.id == bindparam("token_id"))
_CONSUME = (
    update(_TABLE)
    .where(
        _TABLE.c.id == bindparam("token_id"),
        _TABLE.c.uses_left > 0,
        _TABLE.c.revoked_at.is_(None),
        _TABLE.c.expires_at > bindparam("now"),
    )
    .values(uses_left=_TABLE.c.uses_left - 1)
)


_GROUPS = Group.__table__  # type: ignore[attr-defined]
_CERTIFICATES = Certificate.__table__  # type: ignore[attr-defined]
_ENROLLMENT_FACTS = (
    sa_select(
        _TABLE,
        _GROUPS.c.name.is_not(None).label("group_declared"),
        exists().where(_CERTIFICATES.c.spki_sha256 == bindparam("spki_sha256"),
                       _CERTIFICATES.c.revocation_reason == "keyCompromise")
        .label("key_compromised"))
    .select_from(_TABLE.outerjoin(_GROUPS, _GROUPS.c.name == _TABLE.c.group))
    .where(_TABLE.c.id == bindparam("token_id"))
)


def enrollment_facts(*, session: Session, token_id: str, spki_sha256: str) -> Row[Any] | None:
    """What an enrollment with a token decides on, in one query (none of it locked): the
    token row's columns, whether its group is declared (group_declared) and whether a
    certificate of the public key *spki_sha256* was revoked for keyCompromise
    (key_compromised); None for an unknown token."""
    return execute(session, _ENROLLMENT_FACTS, token_id=token_id,
                   spki_sha256=spki_sha256).first()


def get_token(*, session: Session, token_id: str) -> BootstrapToken | None:
    """The token row (detached)."""
    row = execute(session, _SELECT, token_id=token_id).mappings().first()
    return BootstrapToken(**row) if row else None


def consume_token_use(*, session: Session, token_id: str, now: datetime) -> bool:
    """Take one use of a live token; False when none is left (or it expired or was revoked)."""
    return bool(execute(session, _CONSUME, token_id=token_id, now=now).rowcount == 1)


def revoke_tokens(*, session: Session, token_ids: Sequence[str], now: datetime) -> None:
    if token_ids:
        session.exec(
            update(BootstrapToken)
            .where(col(BootstrapToken.id).in_(list(token_ids)))
            .values(revoked_at=now)
        )


def unused_tokens_for_device(*, session: Session, device_id: str) -> list[str]:
    statement = select(BootstrapToken.id).where(
        BootstrapToken.device_id == device_id,
        col(BootstrapToken.revoked_at).is_(None),
        col(BootstrapToken.uses_left) > 0,
    )
    return list(session.exec(statement).all())


def list_tokens(
    *, session: Session, group: str | None = None, device_id: str | None = None
) -> Sequence[BootstrapToken]:
    statement = select(BootstrapToken).order_by(
        col(BootstrapToken.created_at), col(BootstrapToken.id)
    )
    if group:
        statement = statement.where(BootstrapToken.group == group)
    if device_id:
        statement = statement.where(BootstrapToken.device_id == device_id)
    return session.exec(statement).all()
