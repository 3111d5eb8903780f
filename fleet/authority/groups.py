"""Device groups are declared before anything names them; an undeclared group is refused.

Like AWS IoT thing groups: ``fleet group create`` declares one, tokens are minted for
declared groups only (and so devices enroll into declared groups only), EST labels must point
at declared groups, and a group is deleted only when no device, no live token and no vendor
(``fleet vendor add --group``) is in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy.engine import Engine
from sqlmodel import Session

from fleet import pki
from fleet.authority.core import AuthorityCore
from fleet.errors import ConfigError, ConflictError, UnknownGroupError
from fleet.registry import groups as groups_db
from fleet.registry import session as new_session
from fleet.registry import unavailable_as_error
from fleet.registry import vendors as vendors_db
from fleet.registry.groups import Lock
from fleet.registry.models import Group

DESCRIPTION_MAX = 256  # the registry column's width
NAMES_SHOWN = 20
"""Declared groups an error names before it points at ``fleet group list``."""


class GroupPolicy(AuthorityCore):
    """Operators declare and delete groups."""

    def create_group(self, *, name: str, actor: str, description: str | None = None) -> Group:
        with self._audited("group.create", actor=actor) as session:
            if description is not None and len(description) > DESCRIPTION_MAX:
                raise ConflictError(f"a description holds at most {DESCRIPTION_MAX} characters",
                                    group=name)
            if self._declared(session, name):
                raise ConflictError(f"group {name} is already declared", group=name)
            return self._declare(session, name, actor=actor, description=description)

    def ensure_group(self, *, name: str, actor: str) -> bool:
        """Declare *name* unless it is declared already; True when this call declared it
        (the simulator declares the group of its scenario so)."""
        with self._audited("group.create", actor=actor) as session:
            if self._declared(session, name):
                return False
            self._declare(session, name, actor=actor, description=None)
        return True

    def _declared(self, session: Session, name: str) -> bool:
        return groups_db.get_group(session=session, name=pki.check_group_name(name),
                                   lock="update") is not None

    def _declare(self, session: Session, name: str, *, actor: str,
                 description: str | None) -> Group:
        group = groups_db.add_group(session=session, group=Group(
            name=name, description=description, created_at=self.clock(), created_by=actor))
        self.audit(session, action="group.create", outcome="ok", actor=actor,
                   detail={"group": name, "description": description})
        return group

    def delete_group(self, *, name: str, actor: str) -> Group:
        """Delete a group nothing is in: no device (whatever its status), no token that
        could still enroll one and no vendor whose devices enroll into it."""
        with self._audited("group.delete", actor=actor) as session:
            group = require_group(session, name, lock="update")
            members = groups_db.members(session=session, now=self.clock(), group=name).get(name)
            if members is not None:
                held = [f"{count} {status} device(s)"
                        for status, count in sorted(members.devices.items())]
                if members.live_tokens:
                    held.append(f"{members.live_tokens} live token(s)")
                raise ConflictError(
                    f"group {name} is not empty: {', '.join(held)}; revoke its tokens (fleet "
                    "token revoke) and delete its devices (fleet device delete) first",
                    group=name)
            vendors = [vendor.name for vendor in vendors_db.list_vendors(session=session)
                       if vendor.group == name]
            if vendors:
                raise ConflictError(
                    f"group {name} is not empty: vendor {', '.join(vendors)} enrolls devices "
                    "into it; remove the vendor first (fleet vendor remove NAME)", group=name)
            groups_db.delete_group(session=session, name=name)
            self.audit(session, action="group.delete", outcome="ok", actor=actor,
                       detail={"group": name})
        return group

def require_label_groups(engine: Engine, labels: Mapping[str, str]) -> None:
    """Every EST label (``est.labels``) points at a declared group; ConfigError otherwise."""
    if not labels:
        return
    with unavailable_as_error(), new_session(engine) as session:
        declared = groups_db.group_names(session=session)
    for label, group in labels.items():
        if group not in declared:
            raise ConfigError("est.labels", dict(labels), (
                f"label {label!r} points at group {group!r}, which is not declared; "
                f"{known_groups(declared)}"))


def require_group(session: Session, name: str, *, lock: Lock | None = None) -> Group:
    """The declared group *name*; UnknownGroupError naming the declared ones otherwise."""
    group = groups_db.get_group(session=session, name=pki.check_group_name(name), lock=lock)
    if group is None:
        raise UnknownGroupError(
            f"unknown group {name!r}; {known_groups(groups_db.group_names(session=session))}",
            group=name)
    return group


def known_groups(names: Iterable[str]) -> str:
    """The declared groups, for an error message."""
    names = list(names)
    if not names:
        return "no group is declared yet: fleet group create NAME"
    more = len(names) - NAMES_SHOWN
    listing = ", ".join(names[:NAMES_SHOWN]) + (f" and {more} more (fleet group list)"
                                                 if more > 0 else "")
    return f"declared groups: {listing}"
