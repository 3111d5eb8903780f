"""``fleet audit``: the append-only record of every security decision."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from fleet.cli import params
from fleet.cli.context import fleet_of
from fleet.cli.output import emit_json, iso, table
from fleet.registry import AuditEvent, utcnow
from fleet.registry import events as events_db


def event_json(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id, "at": iso(row.at), "action": row.action, "outcome": row.outcome,
        "actor": row.actor, "device_id": row.device_id, "serial": row.serial,
        "reason": row.reason, "detail": json.loads(row.detail) if row.detail else None,
    }


def audit(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="DURATION|TIME",
        help="Only events in the last DURATION (e.g. 1h) or after an ISO 8601 time.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    action: Annotated[str | None, typer.Option(
        "--action", help="Only this action, e.g. enroll, device.revoke, connect.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show audit events, oldest first."""
    start = params.since(since, now=utcnow())
    with fleet_of(ctx).session() as session:
        objects = [event_json(row) for row in events_db.list_audit(
            session=session, since=start, device_id=device, action=action)]
    if as_json:
        emit_json(objects)
        return
    table("Audit events", ("at", "action", "outcome", "actor", "device", "serial", "reason"), (
        (o["at"], o["action"], o["outcome"], o["actor"], o["device_id"], o["serial"],
         o["reason"]) for o in objects), wide=("reason",))
