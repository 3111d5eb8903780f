"""File descriptors: raise the open-files limit, and fit the connection caps into it.

Every connection costs a descriptor. Caps larger than the limit only move the failure from
a clear refusal to EMFILE in the accept loop, where the broker and the EST service in one
process starve each other. So at start the soft limit is raised to the hard limit, and the
services' connection caps are lowered, in proportion, to what is left after a reserve for
the database, logs, listening sockets and the event loop.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Collection

from fleet.settings import Settings

log = logging.getLogger(__name__)

RESERVE = 64
"""Descriptors kept out of the connection caps: database pool and files, logs, listeners."""

_CAPS = {"est": "est_max_connections", "broker": "max_connections"}
"""The connection cap of each service, by the name ``fleet serve`` knows it by."""


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:  # some sandboxes refuse it: keep the soft limit
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft if soft != resource.RLIM_INFINITY else 2**20


def fit_connections(settings: Settings, *, services: Collection[str], limit: int) -> Settings:
    """*settings* with the connection caps of *services* lowered to fit *limit* descriptors."""
    caps = {_CAPS[name]: getattr(settings, _CAPS[name]) for name in services}
    available = max(limit - RESERVE, len(caps))
    wanted = sum(caps.values())
    if wanted <= available:
        return settings
    fitted = {name: max(1, cap * available // wanted) for name, cap in caps.items()}
    log.warning("open-files limit %d: %s", limit, ", ".join(
        f"{name} lowered from {caps[name]} to {value}" for name, value in fitted.items()))
    return settings.with_overrides(**fitted)


def fit_open_files(settings: Settings, *, services: Collection[str]) -> Settings:
    """Raise the open-files limit, then fit *services*' connection caps into it."""
    return fit_connections(settings, services=services, limit=raise_open_files_limit())
