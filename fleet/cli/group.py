"""``fleet group``: declare, list, show and delete device groups."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleet.authority.groups import DESCRIPTION_MAX, require_group
from fleet.cli.context import Fleet, fleet_of
from fleet.cli.output import command_group, emit_json, fields, iso, say, table
from fleet.registry import groups as groups_db
from fleet.registry import utcnow
from fleet.registry.groups import Members
from fleet.registry.models import Group

app = command_group("Device groups: declared before a token, a device or an EST label "
                    "names them.")

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="Group name.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def group_json(group: Group, members: Members | None) -> dict[str, Any]:
    members = members or Members()
    return {"name": group.name, "description": group.description,
            "created_at": iso(group.created_at), "created_by": group.created_by,
            "devices": dict(sorted(members.devices.items())),
            "live_tokens": members.live_tokens}


def _shown(fleet: Fleet, name: str) -> dict[str, Any]:
    with fleet.session() as session:
        group = require_group(session, name)
        members = groups_db.members(session=session, now=utcnow(), group=name)
    return group_json(group, members.get(name))


@app.command("create")
def create(
    ctx: typer.Context,
    name: NameArgument,
    description: Annotated[str | None, typer.Option(
        "--description", help=f"Free text, at most {DESCRIPTION_MAX} characters.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Declare a group; tokens can then be minted for it."""
    fleet = fleet_of(ctx)
    group = fleet.authority.create_group(name=name, description=description, actor=fleet.actor)
    if as_json:
        emit_json(group_json(group, None))
    else:
        say(f"declared group {group.name}")


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every declared group, with its devices and live tokens."""
    with fleet_of(ctx).session() as session:
        members = groups_db.members(session=session, now=utcnow())
        objects = [group_json(g, members.get(g.name))
                   for g in groups_db.list_groups(session=session)]
    if as_json:
        emit_json(objects)
        return
    table("Groups", ("name", "devices", "live tokens", "description", "created"), (
        (o["name"], sum(o["devices"].values()), o["live_tokens"], o["description"],
         o["created_at"]) for o in objects), wide=("description",))


@app.command("show")
def show(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """One group: its devices by status and its live tokens."""
    data = _shown(fleet_of(ctx), name)
    if as_json:
        emit_json(data)
        return
    fields({**data, "devices": ", ".join(f"{n} {s}" for s, n in data["devices"].items())
            or "none"})


@app.command("delete")
def delete(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Delete a group that holds no device and no live token."""
    fleet = fleet_of(ctx)
    group = fleet.authority.delete_group(name=name, actor=fleet.actor)
    if as_json:
        emit_json(group_json(group, None))
    else:
        say(f"deleted group {group.name}")
