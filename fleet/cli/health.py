"""``fleet health``: what needs an operator's attention (fleet.health), for people and cron."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from fleet import health
from fleet.cli import params
from fleet.cli.context import fleet_of
from fleet.cli.output import emit_json, iso, say, table
from fleet.errors import ForbiddenError
from fleet.registry import utcnow

DEFAULT_WINDOW = timedelta(days=7)
DEFAULT_LOOK_BACK = timedelta(days=1)


def health_command(
    ctx: typer.Context,
    within: Annotated[timedelta | None, typer.Option(
        "--within", parser=params.duration, metavar="DURATION", show_default="7d",
        help="Report certificates and tokens that expire within this window.")] = None,
    since: Annotated[timedelta | None, typer.Option(
        "--since", parser=params.duration, metavar="DURATION", show_default="24h",
        help="Look this far back for revoked or superseded certificates still presented "
             "and for certificates connected from two addresses at once.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Certificates about to expire or overdue for renewal, revoked ones still presented,
    certificates connected from two addresses at once, suspended devices and unused tokens.
    Exits 1 when something needs action."""
    fleet = fleet_of(ctx)
    settings = fleet.settings
    now = utcnow()
    window = within or DEFAULT_WINDOW
    look_back = since or DEFAULT_LOOK_BACK
    with fleet.session() as session:
        found = health.findings(session, now=now, within=window, since=now - look_back,
                                renewal_fraction=settings.renewal_fraction,
                                superseded_grace=settings.superseded_grace)
    action = [f for f in found if f.needs_action]
    if as_json:
        emit_json({"at": iso(now), "within_seconds": int(window.total_seconds()),
                   "since": iso(now - look_back), "needs_action": bool(action),
                   "findings": [{"kind": f.kind, "subject": f.subject, "detail": f.detail,
                                 "needs_action": f.needs_action, "at": iso(f.at)}
                                for f in found]})
    elif found:
        table("Findings", ("kind", "subject", "action", "detail"),
              ((f.kind, f.subject, "yes" if f.needs_action else "", f.detail) for f in found),
              wide=("detail",))
    else:
        say("nothing to report")
    if action:
        raise ForbiddenError(f"{len(action)} finding{'s' if len(action) != 1 else ''} "
                             "need action")
