"""``fleet device``: list, show, revoke, suspend, resume, delete and re-arm devices."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any

import typer

from fleet.authority.groups import require_group
from fleet.cli import params
from fleet.cli.cert import ReasonOption, certificates_table, usable_until
from fleet.cli.context import Fleet, fleet_of
from fleet.cli.output import command_group, emit_json, fields, iso, say, table
from fleet.errors import NotFoundError
from fleet.registry import Certificate, Device, DeviceStatus
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db

app = command_group("Enrolled (and pre-registered) devices.")

STATUS_REASON_MAX = 64  # the registry column's width
DeviceArgument = Annotated[str, typer.Argument(metavar="ID", help="Device id.")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print the device as `device show --json` does.")]


def device_json(row: Device, certificates: Sequence[Certificate] | None = None, *,
                grace: timedelta = timedelta(0)) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id, "group": row.group, "status": row.status,
        "status_reason": row.status_reason, "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }
    if certificates is not None:
        data["certificates"] = [
            {"serial": c.serial, "status": c.status, "not_before": iso(c.not_before),
             "not_after": iso(c.not_after), "usable_until": iso(usable_until(c, grace)),
             "revocation_reason": c.revocation_reason}
            for c in certificates
        ]
    return data


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[DeviceStatus | None, typer.Option(
        "--status", case_sensitive=False, help="Only devices in this state.")] = None,
    group: Annotated[str | None, typer.Option("--group", help="Only this group.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List devices by id."""
    with fleet_of(ctx).session() as session:
        if group is not None:
            require_group(session, group)
        objects = [device_json(row) for row in devices_db.list_devices(
            session=session, status=status.value if status else None, group=group)]
    if as_json:
        emit_json(objects)
        return
    table("Devices", ("id", "group", "status", "reason", "updated"), (
        (o["id"], o["group"], o["status"], o["status_reason"], o["updated_at"])
        for o in objects))


@app.command("show")
def show(
    ctx: typer.Context,
    device_id: DeviceArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a device and its certificates."""
    data = shown(fleet_of(ctx), device_id)
    if as_json:
        emit_json(data)
        return
    fields(data, keys=("id", "group", "status", "status_reason", "created_at", "updated_at"))
    certificates_table("Certificates", [
        {**c, "device_id": device_id} for c in data["certificates"]])


def shown(fleet: Fleet, device_id: str) -> dict[str, Any]:
    """``device show --json``: the device and its certificates, as the registry has them now."""
    with fleet.session() as session:
        row = devices_db.get_device(session=session, device_id=device_id)
        if row is None:
            raise NotFoundError(f"unknown device {device_id!r}", device_id=device_id)
        return device_json(row, certs_db.list_certificates(session=session, device_id=row.id),
                           grace=fleet.settings.superseded_grace)


def _done(fleet: Fleet, device_id: str, message: str, *, as_json: bool) -> None:
    """After a change: the device as ``device show --json`` prints it, or *message*."""
    if as_json:
        emit_json(shown(fleet, device_id))
    else:
        say(message)


@app.command("revoke")
def revoke(ctx: typer.Context, device_id: DeviceArgument, reason: ReasonOption = None,
           as_json: JsonOption = False) -> None:
    """Revoke a device: all its certificates and unused tokens; it can never enroll again."""
    fleet = fleet_of(ctx)
    name = params.reason(reason)
    fleet.authority.revoke_device(device_id=device_id, reason=name, actor=fleet.actor)
    _done(fleet, device_id, f"revoked device {device_id} ({name})", as_json=as_json)


@app.command("delete")
def delete(ctx: typer.Context, device_id: DeviceArgument,
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Delete a device that never enrolled or is revoked. Its certificates (and so the CRL)
    and its audit history stay; tokens still bound to it are revoked; the id is free again."""
    fleet = fleet_of(ctx)
    row = fleet.authority.delete_device(device_id=device_id, actor=fleet.actor)
    if as_json:
        emit_json({**device_json(row), "deleted": True})
    else:
        say(f"deleted device {device_id} ({row.status}, group {row.group}); its certificates "
            "and audit history stay")


@app.command("suspend")
def suspend(
    ctx: typer.Context,
    device_id: DeviceArgument,
    reason: Annotated[str | None, typer.Option("--reason", help="Free-text note.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Suspend a device: it is dropped from the broker until resumed."""
    if reason is not None and len(reason) > STATUS_REASON_MAX:
        raise typer.BadParameter(f"at most {STATUS_REASON_MAX} characters",
                                 param_hint="'--reason'")
    fleet = fleet_of(ctx)
    fleet.authority.suspend_device(device_id=device_id, reason=reason, actor=fleet.actor)
    _done(fleet, device_id, f"suspended device {device_id}", as_json=as_json)


@app.command("resume")
def resume(ctx: typer.Context, device_id: DeviceArgument, as_json: JsonOption = False) -> None:
    """Resume a suspended device."""
    fleet = fleet_of(ctx)
    fleet.authority.resume_device(device_id=device_id, actor=fleet.actor)
    _done(fleet, device_id, f"resumed device {device_id}", as_json=as_json)


@app.command("rearm")
def rearm(ctx: typer.Context, device_id: DeviceArgument,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Let the manufacturer certificate the device enrolled with enroll it once more (after a
    factory reset, or to bring a revoked or deleted device back)."""
    fleet = fleet_of(ctx)
    records = fleet.authority.rearm_device(device_id=device_id, actor=fleet.actor)
    if as_json:
        emit_json({"id": device_id, "manufacturer_certificates": [
            {"fingerprint_sha256": r.fingerprint_sha256, "vendor": r.vendor,
             "issuer": r.issuer, "serial": r.serial, "armed": r.armed,
             "rearm_count": r.rearm_count, "enrolled_at": iso(r.enrolled_at),
             "rearmed_at": iso(r.rearmed_at)} for r in records]})
    else:
        say(f"re-armed the manufacturer certificate of device {device_id}: it may enroll "
            "once more")
