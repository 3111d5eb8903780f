"""``fleet cert``: list, show and revoke certificates; issue service certificates."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import Session

from fleet import pki
from fleet.cli import params
from fleet.cli.context import fleet_of
from fleet.cli.destination import Force, check_file
from fleet.cli.output import command_group, emit_json, fields, iso, say, table
from fleet.errors import ConflictError, NotFoundError
from fleet.files import write_private, write_public
from fleet.registry import Certificate, CertificateStatus
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db

app = command_group("Device and service certificates.")

SerialArgument = Annotated[str, typer.Argument(
    metavar="SERIAL", parser=params.serial, help="Serial number in hex (colons allowed).")]
ReasonOption = Annotated[str | None, typer.Option(
    "--reason", show_default=False, help=f"Required. {params.REASON_HELP}")]


def certificate_json(row: Certificate, *, grace: timedelta) -> dict[str, Any]:
    """A certificate as scripts see it; service certificates carry ``service``. A superseded
    one is usable until *grace* after its supersession (``usable_until``)."""
    owner = {"service": row.service} if row.service is not None else {"device_id": row.device_id}
    return {
        "serial": row.serial, **owner, "status": row.status,
        "not_before": iso(row.not_before), "not_after": iso(row.not_after),
        "fingerprint_sha256": row.fingerprint_sha256, "issued_at": iso(row.issued_at),
        "revoked_at": iso(row.revoked_at), "revocation_reason": row.revocation_reason,
        "superseded_at": iso(row.superseded_at), "usable_until": iso(usable_until(row, grace)),
        "replaces": row.replaces,
    }


def usable_until(row: Certificate, grace: timedelta) -> datetime | None:
    """When the broker stops admitting *row*: notAfter, or the end of a superseded
    certificate's grace; None once revoked."""
    if row.status == CertificateStatus.REVOKED:
        return None
    if row.status == CertificateStatus.SUPERSEDED and row.superseded_at is not None:
        return min(row.not_after, row.superseded_at + grace)
    return row.not_after


def certificates_table(title: str, objects: list[dict[str, Any]]) -> None:
    table(title, ("serial", "owner", "status", "not after", "usable until", "reason"), (
        (o["serial"], o.get("device_id") or f"service/{o.get('service')}", o["status"],
         o["not_after"], o.get("usable_until"), o["revocation_reason"]) for o in objects),
        wide=("serial",))


@app.command("list")
def list_(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    status: Annotated[CertificateStatus | None, typer.Option(
        "--status", case_sensitive=False, help="Only certificates in this state.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List certificates, oldest first."""
    fleet = fleet_of(ctx)
    with fleet.session() as session:
        rows = certs_db.list_certificates(session=session, device_id=device, service=service,
                                          status=status.value if status else None)
        if not rows:
            _require_owner(session, device=device, service=service)
        objects = [certificate_json(row, grace=fleet.settings.superseded_grace) for row in rows]
    if as_json:
        emit_json(objects)
    else:
        certificates_table("Certificates", objects)


def _require_owner(session: Session, *, device: str | None, service: str | None) -> None:
    """``--device`` names a registered device (a pending one has no certificates yet) or one
    that holds certificates; ``--service`` a service that holds certificates."""
    if device is not None and devices_db.get_device(session=session, device_id=device) is None \
            and not certs_db.list_certificates(session=session, device_id=device):
        raise NotFoundError(f"unknown device {device!r}", device_id=device)
    if service is not None and not certs_db.list_certificates(session=session, service=service):
        raise NotFoundError(f"unknown service {service!r}", service=service)


@app.command("show")
def show(
    ctx: typer.Context,
    serial: SerialArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    pem: Annotated[bool, typer.Option("--pem", help="Print the certificate as PEM.")] = False,
) -> None:
    """Show one certificate."""
    with fleet_of(ctx).session() as session:
        row = certs_db.get_certificate(session=session, serial=serial)
    if row is None:
        raise NotFoundError(f"unknown certificate serial {serial}", serial=serial)
    if pem:
        typer.echo(row.pem, nl=False)
        return
    data = certificate_json(row, grace=fleet_of(ctx).settings.superseded_grace)
    if as_json:
        emit_json(data)
        return
    fields(data)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    serial: SerialArgument,
    reason: ReasonOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the certificate as JSON.")]
    = False,
) -> None:
    """Revoke one certificate; it joins the CRL and its live sessions are dropped."""
    fleet = fleet_of(ctx)
    name = params.reason(reason)
    row = fleet.authority.revoke_certificate(serial=serial, reason=name, actor=fleet.actor)
    if as_json:
        emit_json(certificate_json(row, grace=fleet.settings.superseded_grace))
        return
    owner = row.device_id or f"service/{row.service}"
    say(f"revoked certificate {row.serial} of {owner} ({name})")


@app.command("issue-service")
def issue_service(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Service name (letters, digits, . _ -).")],
    out_dir: Annotated[Path, typer.Option(
        "--out-dir", file_okay=False, help="Where NAME.pem, NAME.key and ca.pem are written "
        "(created 0700 if missing, inside a directory that exists).")],
    force: Force = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Issue a client certificate for a backend service with a fresh P-256 key.

    ca.pem may be shared by the services of one directory: it is left as it is when it holds
    the chain already, and replaced only with --force when it holds another.
    """
    fleet = fleet_of(ctx)
    pki.check_service_name(name)  # before it becomes part of a file name
    cert_path, key_path, chain_path = (out_dir / f"{name}.pem", out_dir / f"{name}.key",
                                       out_dir / "ca.pem")
    if out_dir.is_dir():
        for path in (cert_path, key_path):
            check_file(path, force=force)
    elif not out_dir.parent.is_dir():
        raise ConflictError(f"{out_dir.parent} is not a directory")
    chain = fleet.authority.ca.chain_pem().encode()
    if chain_path.exists() and chain_path.read_bytes() != chain:
        check_file(chain_path, force=force)
    key = pki.generate_private_key("p256")
    issued = fleet.authority.issue_service_certificate(name=name, public_key=key.public_key(),
                                                       actor=fleet.actor)
    write_private(key_path, pki.private_key_pem(key))
    write_public(cert_path, pki.certificate_pem(issued.certificate).encode())
    if not chain_path.exists() or chain_path.read_bytes() != chain:
        write_public(chain_path, chain)
    data = {**certificate_json(issued.record, grace=fleet.settings.superseded_grace),
            "uri": pki.Identity("service", name).spiffe_uri(fleet.settings.trust_domain),
            "certificate_file": str(cert_path), "key_file": str(key_path),
            "chain_file": str(chain_path)}
    if as_json:
        emit_json(data)
        return
    say(f"issued {data['uri']} serial {data['serial']}, valid until {data['not_after']}")
    say(f"certificate: {cert_path}\nkey (0600):  {key_path}\nCA chain:    {chain_path}")
