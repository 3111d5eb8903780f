"""``fleet audit``: the append-only record of every security decision."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from fleet.cli import params
from fleet.cli.context import fleet_of
from fleet.cli.output import emit_json, iso, say, table
from fleet.errors import ConflictError
from fleet.registry import AuditEvent, utcnow
from fleet.registry import events as events_db


def event_json(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id, "at": iso(row.at), "action": row.action, "outcome": row.outcome,
        "actor": row.actor, "device_id": row.device_id, "serial": row.serial,
        "reason": row.reason, "detail": json.loads(row.detail) if row.detail else None,
    }


app = typer.Typer(help="Show and verify the audit log.", no_args_is_help=False,
                  rich_markup_mode=None, pretty_exceptions_show_locals=False)


@app.callback(invoke_without_command=True)
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
    """Show audit events, oldest first (``fleet audit verify`` checks the hash chain)."""
    if ctx.invoked_subcommand is not None:
        return
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


@app.command("verify")
def verify(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check that no audit event was changed, removed or inserted (SHA-256 hash chain)."""
    with fleet_of(ctx).session() as session:
        checked, problem = events_db.verify_audit_chain(session=session)
    if as_json:
        emit_json({"events": checked, "ok": problem is None, "problem": problem})
    if problem is not None:
        raise ConflictError(f"audit log is not intact after {checked} good events: {problem}")
    if not as_json:
        say(f"audit log intact: {checked} events, hash chain verified")
