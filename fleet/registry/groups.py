"""Declared device groups: every group a token, a device or an EST label names is a row here.

Minting a token reads its group ``FOR SHARE`` and deleting a group reads it ``FOR UPDATE``
(PostgreSQL; SQLite write transactions are serial anyway), so a group cannot be deleted
while a token for it is being minted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import bindparam, delete, func, insert
from sqlalchemy import select as sa_select
from sqlmodel import Session

from fleet.registry.engine import execute
from fleet.registry.models import BootstrapToken, Device, Group

Lock = Literal["share", "update"]

_TABLE = Group.__table__  # type: ignore[attr-defined]
_DEVICES = Device.__table__  # type: ignore[attr-defined]
_TOKENS = BootstrapToken.__table__  # type: ignore[attr-defined]
_SELECT = sa_select(_TABLE).where(_TABLE.c.name == bindparam("name"))
_SELECTS = {None: _SELECT, "share": _SELECT.with_for_update(read=True),
            "update": _SELECT.with_for_update()}
_INSERT = insert(_TABLE)
_DELETE = delete(_TABLE).where(_TABLE.c.name == bindparam("name"))
_NAMES = sa_select(_TABLE.c.name).order_by(_TABLE.c.name)
_DEVICES_BY_STATUS = (sa_select(_DEVICES.c.group, _DEVICES.c.status,
                                 func.count().label("count"))
                      .group_by(_DEVICES.c.group, _DEVICES.c.status))
_LIVE_TOKENS = (sa_select(_TOKENS.c.group, func.count().label("count"))
                .where(_TOKENS.c.revoked_at.is_(None), _TOKENS.c.uses_left > 0,
                       _TOKENS.c.expires_at > bindparam("now"))
                .group_by(_TOKENS.c.group))


@dataclass(frozen=True, slots=True)
class Members:
    """What is in a group: its devices by status and its tokens that can still enroll."""

    devices: Counter[str] = field(default_factory=Counter)
    live_tokens: int = 0

    @property
    def empty(self) -> bool:
        return not self.devices and not self.live_tokens


def get_group(*, session: Session, name: str, lock: Lock | None = None) -> Group | None:
    """The group row (detached), locked until commit with *lock* on PostgreSQL."""
    row = execute(session, _SELECTS[lock], name=name).mappings().first()
    return Group(**row) if row else None


_DECLARED = sa_select(_TABLE.c.name).where(_TABLE.c.name == bindparam("name"))


def declared(*, session: Session, name: str) -> bool:
    """Whether the group *name* is declared."""
    return execute(session, _DECLARED, name=name).first() is not None


def add_group(*, session: Session, group: Group) -> Group:
    execute(session, _INSERT, **group.model_dump())
    return group


def delete_group(*, session: Session, name: str) -> None:
    execute(session, _DELETE, name=name)


def list_groups(*, session: Session) -> Sequence[Group]:
    return [Group(**row) for row in
            execute(session, sa_select(_TABLE).order_by(_TABLE.c.name)).mappings()]


def group_names(*, session: Session) -> list[str]:
    return list(execute(session, _NAMES).scalars())


def members(*, session: Session, now: datetime, group: str | None = None) -> dict[str, Members]:
    """Members of every group that has any (of *group* alone when given), by group name."""
    devices, tokens = _DEVICES_BY_STATUS, _LIVE_TOKENS
    if group is not None:
        devices = devices.where(_DEVICES.c.group == group)
        tokens = tokens.where(_TOKENS.c.group == group)
    by_status: dict[str, Counter[str]] = {}
    for row in execute(session, devices).mappings():
        by_status.setdefault(row["group"], Counter())[row["status"]] = row["count"]
    live = {row["group"]: row["count"] for row in execute(session, tokens, now=now).mappings()}
    return {name: Members(devices=by_status.get(name, Counter()), live_tokens=live.get(name, 0))
            for name in by_status.keys() | live.keys()}
