"""``fleet token``: one-time bootstrap tokens for factory enrollment."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fleet.authority import IssuedToken
from fleet.authority.groups import require_group
from fleet.cli import params
from fleet.cli.context import fleet_of
from fleet.cli.destination import Force, claimed
from fleet.cli.output import command_group, emit_json, iso, note, say, stderr, table
from fleet.errors import FleetError
from fleet.files import write_private
from fleet.registry import BootstrapToken, utcnow
from fleet.registry import tokens as tokens_db

app = command_group("Bootstrap tokens devices enroll with.")

BATCH = 1000
"""Tokens created per authority call (each call is one transaction)."""

CSV_COLUMNS = ("id", "token", "group", "device_id", "uses", "expires_at")


def created_json(issued: IssuedToken) -> dict[str, Any]:
    row = issued.row
    return {"id": row.id, "token": str(issued.token), "group": row.group,
            "device_id": row.device_id, "uses": row.uses_left, "expires_at": iso(row.expires_at)}


def listed_json(row: BootstrapToken, *, now: datetime) -> dict[str, Any]:
    return {
        "id": row.id, "group": row.group, "device_id": row.device_id, "uses": row.uses_left,
        "max_uses": row.max_uses, "expires_at": iso(row.expires_at),
        "expired": row.expires_at <= now, "revoked": row.revoked_at is not None,
        "revoked_at": iso(row.revoked_at), "created_at": iso(row.created_at),
        "created_by": row.created_by,
    }


def _csv(objects: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(objects)
    return buffer.getvalue().encode()


@app.command("create")
def create(
    ctx: typer.Context,
    group: Annotated[str, typer.Option(
        "--group", help="Group the enrolled devices join (declared: fleet group create).")],
    device: Annotated[str | None, typer.Option(
        "--device", help="Bind the token to this device id (pre-registers the device).")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="How many tokens.")] = 1,
    ttl: Annotated[timedelta | None, typer.Option(
        "--ttl", parser=params.duration, metavar="DURATION", show_default="config, 24h",
        help="How long the tokens stay valid, e.g. 15m, 24h, 7d.")] = None,
    uses: Annotated[int | None, typer.Option(
        "--uses", min=1, show_default="config, 1",
        help="Enrollments each token allows.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False, help="Write the tokens to this CSV file (mode 0600), a new "
        "one unless --force; its directory must exist.")] = None,
    force: Force = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Mint bootstrap tokens; the secrets are shown only now."""
    fleet = fleet_of(ctx)
    issued: list[IssuedToken] = []
    failure: FleetError | None = None
    # --out is refused, or held, before the first token is minted.
    with claimed(out, force=force), Progress(
            TextColumn("creating tokens"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=stderr(), transient=True,
            disable=count <= BATCH) as progress:
        task = progress.add_task("tokens", total=count)
        while len(issued) < count:
            batch = min(BATCH, count - len(issued))
            try:
                issued += fleet.authority.create_tokens(
                    group=group, device_id=device, count=batch, uses=uses, ttl=ttl,
                    actor=fleet.actor)
            except FleetError as error:
                if not issued:
                    raise
                # Earlier batches are committed: hand out their secrets, then fail.
                note(f"created {len(issued)} of {count} tokens before an error")
                failure = error
                break
            progress.advance(task, batch)
    objects = [created_json(t) for t in issued]
    if out is not None:
        write_private(out, _csv(objects))
    if as_json:
        emit_json(objects)
    elif out is not None:
        say(f"wrote {len(objects)} token(s) for group {group} to {out} (mode 0600)")
    else:
        table("Tokens", ("id", "token", "group", "device", "uses", "expires at"),
              ((o["id"], o["token"], o["group"], o["device_id"], o["uses"], o["expires_at"])
               for o in objects), wide=("token",))
    if failure is not None:
        raise failure


@app.command("list")
def list_(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option("--group", help="Only this group.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only tokens bound to it.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every token, used and expired ones included (never the secrets)."""
    now = utcnow()
    with fleet_of(ctx).session() as session:
        if group is not None:
            require_group(session, group)
        objects = [listed_json(row, now=now) for row in
                   tokens_db.list_tokens(session=session, group=group, device_id=device)]
    if as_json:
        emit_json(objects)
        return
    table("Tokens", ("id", "group", "device", "uses left", "expires at", "state"), (
        (o["id"], o["group"], o["device_id"], f"{o['uses']}/{o['max_uses']}", o["expires_at"],
         _state(o)) for o in objects))


def _state(token: dict[str, Any]) -> str:
    if token["revoked"]:
        return "revoked"
    if token["expired"]:
        return "expired"
    return "used" if token["uses"] == 0 else "usable"


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's public id.")],
) -> None:
    """Revoke a token so it can no longer enroll anything."""
    fleet = fleet_of(ctx)
    # A whole "<id>.<secret>" pasted by mistake must not end up in messages or the audit log.
    public_id = token_id.partition(".")[0]
    row = fleet.authority.revoke_token(token_id=public_id, actor=fleet.actor)
    say(f"revoked token {row.id} (group {row.group})")
