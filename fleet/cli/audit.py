"""``fleet audit``: the append-only record of every security decision."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from fleet import checkpoints
from fleet.cli import params
from fleet.cli.context import fleet_of
from fleet.cli.output import emit_json, iso, note, say, table
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
        "--action", help="Only this action or family: e.g. enroll, reenroll, device.revoke, "
        "device (every device.* action), broker.connect, token.create.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show audit events, oldest first (``fleet audit verify`` checks the hash chain)."""
    if ctx.invoked_subcommand is not None:
        return
    start = params.since(since, now=utcnow())
    with fleet_of(ctx).session() as session:
        objects = [event_json(row) for row in events_db.list_audit(
            session=session, since=start, device_id=device, action=action)]
        if action is not None and not objects:
            _explain_action(action, events_db.recorded_actions(session=session))
    if as_json:
        emit_json(objects)
        return
    table("Audit events", ("at", "action", "outcome", "actor", "device", "serial", "reason"), (
        (o["at"], o["action"], o["outcome"], o["actor"], o["device_id"], o["serial"],
         o["reason"]) for o in objects), wide=("reason",))


def _explain_action(action: str, recorded: list[str]) -> None:
    """A note on stderr when --action names nothing the log holds (a typo, or a name
    from another tool): the actions it does hold. The output stays an empty list."""
    if any(name == action or name.startswith(action + ".") for name in recorded):
        return
    note(f"note: no audit event has action {action!r} or {action + '.*'!r}; the log holds: "
         f"{', '.join(recorded) or 'no events'}")


@app.command("verify")
def verify(
    ctx: typer.Context,
    chain_only: Annotated[bool, typer.Option(
        "--chain-only", help="Check only the hash chain, not the keyed checkpoints (when the "
        "key is not at hand): deleted newest events or a re-chained log go unnoticed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check that no audit event was changed, removed or inserted: the SHA-256 hash chain and
    every keyed checkpoint of its head, in the registry and in the data dir's file."""
    fleet = fleet_of(ctx)
    with fleet.session() as session:
        report = checkpoints.verify(settings=fleet.settings, session=session,
                                    chain_only=chain_only)
    if as_json:
        emit_json(report.as_json())
    else:
        for finding in report.ordered():
            say(finding.line())
        for line in report.notes:
            note(f"note: {line}")
    if not report.ok:
        raise ConflictError(_summary(report))
    if as_json:
        return
    if not report.anchors_checked:
        say(f"audit log hash chain verified: {report.events} events; checkpoints not checked "
            "(--chain-only), so deleted newest events or a re-chained log would go unnoticed")
        return
    say(f"audit log intact: {report.events} events, hash chain verified; "
        f"{report.checkpoints} checkpoints verified in the registry and in "
        f"{checkpoints.journal_path(fleet.settings)}, the newest confirming event "
        f"{report.anchored_to}")


def _summary(report: checkpoints.Report) -> str:
    count = len(report.findings)
    kinds = ", ".join(dict.fromkeys(f.kind for f in report.ordered()))
    where = (f"; the first bad position is event {report.first_bad}"
             if report.first_bad is not None else "")
    return f"audit log is not intact: {count} problem{'s' * (count > 1)} ({kinds}){where}"
