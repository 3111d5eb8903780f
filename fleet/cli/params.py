"""Parsers for option values shared by several commands; a bad value is a usage error."""

from __future__ import annotations

from datetime import datetime, timedelta

import typer

from fleet.errors import ConfigError
from fleet.pki import REASON_CODES
from fleet.settings import parse_duration

REASON_LIST = ", ".join(REASON_CODES)
REASON_HELP = f"RFC 5280 revocation reason: {REASON_LIST}"


def duration(text: str) -> timedelta:
    """``--ttl 24h`` and friends: 250ms, 60s, 15m, 24h, 30d; zero is refused as such."""
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise typer.BadParameter(f"{text!r}: {exc.reason}") from exc


def since(text: str | None, *, now: datetime) -> datetime | None:
    """A duration back from *now* (``1h``) or an ISO 8601 time."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return now - duration(text)
        except typer.BadParameter as exc:
            raise typer.BadParameter(f"{text!r} is neither a duration (1h, 7d) nor an ISO 8601 "
                                     "time", param_hint="'--since'") from exc
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{text!r} has no time zone; add Z or +00:00",
                                 param_hint="'--since'")
    return moment


def reason(value: str | None) -> str:
    """The RFC 5280 reason name for ``--reason`` (case-insensitive); required."""
    if not value:
        raise typer.BadParameter(f"missing; give one of: {REASON_LIST}", param_hint="'--reason'")
    for name in REASON_CODES:
        if name.casefold() == value.casefold():
            return name
    raise typer.BadParameter(f"{value!r} is not an RFC 5280 reason; use one of: {REASON_LIST}",
                             param_hint="'--reason'")


def serial(value: str) -> str:
    """A certificate serial in any common spelling (``0A:1B``, ``0x0a1b``) as lower-case hex."""
    text = value.strip().lower().replace(":", "").removeprefix("0x")
    try:
        return format(int(text, 16), "x")
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a hexadecimal serial number") from None
