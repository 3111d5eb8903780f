"""``fleet vendor``: the manufacturer CAs whose device certificates (IDevIDs) enroll."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet import pki
from fleet.authority.vendors import parse_allow_list, vendor_cas
from fleet.cli.context import fleet_of
from fleet.cli.output import command_group, emit_json, fields, iso, say, table
from fleet.errors import NotFoundError
from fleet.registry import vendors as vendors_db
from fleet.registry.models import Vendor

app = command_group("Manufacturer CAs: devices holding a certificate of theirs (an IEEE "
                    "802.1AR IDevID) enroll into the vendor's group with it, without a token.")


class DeviceIdFrom(enum.StrEnum):
    CN = "cn"
    SERIAL_NUMBER = "serialNumber"
    SAN_URI = "san-uri"


NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="Vendor name.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def vendor_json(vendor: Vendor, *, allowed: int | None = None,
                enrolled: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": vendor.name, "group": vendor.group, "device_id_from": vendor.device_id_from,
        "fingerprint_sha256": vendor.fingerprint_sha256,
        "ca": [{"subject": ca.subject.rfc4514_string(),
                "fingerprint_sha256": pki.fingerprint_sha256(ca),
                "not_after": iso(ca.not_valid_after_utc)} for ca in vendor_cas(vendor)],
        "allow_list": vendor.allow_listed, "crl_url": vendor.crl_url,
        "crl_file": vendor.crl_file, "channel_binding": vendor.channel_binding,
        "created_at": iso(vendor.created_at), "created_by": vendor.created_by,
    }
    if allowed is not None:
        data["allowed_ids"] = allowed
    if enrolled is not None:
        data["enrolled"] = enrolled
    return data


@app.command("add")
def add(
    ctx: typer.Context,
    name: NameArgument,
    ca: Annotated[Path, typer.Option(
        "--ca", exists=True, dir_okay=False, readable=True,
        help="The vendor's CA certificates (PEM): its root and any intermediates.")],
    group: Annotated[str, typer.Option("--group", help="The declared group its devices "
                                                       "enroll into.")],
    device_id_from: Annotated[DeviceIdFrom, typer.Option(
        "--device-id-from", case_sensitive=False,
        help="Where the device id is in the manufacturer certificate: the subject's CN or "
             "serialNumber, or the last segment of its URI subjectAltName.")] =
        DeviceIdFrom.SERIAL_NUMBER,
    allow: Annotated[Path | None, typer.Option(
        "--allow", exists=True, dir_okay=False, readable=True,
        help="CSV of the device ids that may enroll (first column; a header row is "
             "skipped); without it, any id the vendor certified.")] = None,
    crl_url: Annotated[str | None, typer.Option(
        "--crl-url", help="Where the vendor publishes its CRL (http or https).")] = None,
    crl_file: Annotated[Path | None, typer.Option(
        "--crl-file", exists=True, dir_okay=False, readable=True,
        help="The vendor's CRL, kept current by you (DER or PEM).")] = None,
    channel_binding: Annotated[bool, typer.Option(
        "--require-channel-binding",
        help="Refuse a CSR without the TLS session's tls-unique as its challengePassword "
             "(RFC 7030 3.5; TLS 1.2 only).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Trust a manufacturer CA for enrollment into GROUP (never for the broker or renewals)."""
    fleet = fleet_of(ctx)
    allowed = parse_allow_list(allow.read_bytes()) if allow is not None else None
    vendor = fleet.authority.add_vendor(
        name=name, ca_pem=ca.read_bytes(), group=group, actor=fleet.actor,
        device_id_from=device_id_from.value,
        allowed=allowed, crl_url=crl_url,
        crl_file=str(crl_file.resolve()) if crl_file is not None else None,
        channel_binding=channel_binding)
    if as_json:
        emit_json(vendor_json(vendor, allowed=len(allowed) if allowed is not None else None))
    else:
        listed = f", {len(allowed)} allowed id(s)" if allowed is not None else ""
        say(f"registered vendor {vendor.name}: its devices enroll into group {vendor.group} "
            f"(device id from {vendor.device_id_from}{listed})")


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every registered vendor."""
    with fleet_of(ctx).session() as session:
        objects = [vendor_json(v, enrolled=vendors_db.enrolled_count(session=session,
                                                                      vendor=v.name))
                   for v in vendors_db.list_vendors(session=session)]
    if as_json:
        emit_json(objects)
        return
    table("Vendors", ("name", "group", "device id from", "enrolled", "allow list", "CA"), (
        (o["name"], o["group"], o["device_id_from"], o["enrolled"],
         "yes" if o["allow_list"] else "no", o["ca"][0]["subject"]) for o in objects),
        wide=("CA",))


@app.command("show")
def show(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """One vendor: its CA certificates, policy and the devices it enrolled."""
    with fleet_of(ctx).session() as session:
        vendor = vendors_db.get_vendor(session=session, name=name) \
            if pki.DEVICE_ID_PATTERN.fullmatch(name) else None
        if vendor is None:
            raise NotFoundError(f"unknown vendor {name!r} (fleet vendor list)", vendor=name)
        data = vendor_json(
            vendor, allowed=(vendors_db.allowed_count(session=session, vendor=name)
                             if vendor.allow_listed else None),
            enrolled=vendors_db.enrolled_count(session=session, vendor=name))
    if as_json:
        emit_json(data)
        return
    fields({**data, "ca": "; ".join(f"{c['subject']} ({c['fingerprint_sha256'][:16]}..., "
                                    f"until {c['not_after']})" for c in data["ca"])})


@app.command("remove")
def remove(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """Trust the vendor no more: its certificates no longer enroll; enrolled devices keep
    their Fleet certificates."""
    fleet = fleet_of(ctx)
    vendor = fleet.authority.remove_vendor(name=name, actor=fleet.actor)
    if as_json:
        emit_json({**vendor_json(vendor), "removed": True})
    else:
        say(f"removed vendor {vendor.name}")
