"""``fleet init``: the CA, the TLS server certificate and the registry schema (idempotent)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.engine import make_url

from fleet.ca import (
    CA,
    PASSPHRASE_ENV,
    Paths,
    check_root_key_target,
    ensure_server_certificate,
    init_ca,
)
from fleet.checkpoints import ensure_key
from fleet.cli.context import Fleet, fleet_of
from fleet.cli.output import emit_json, say
from fleet.files import private_dir
from fleet.pki import fingerprint_sha256
from fleet.registry import utcnow
from fleet.settings import Settings


@dataclass(frozen=True, slots=True)
class InitReport:
    """What ``initialize`` created and what it found in place."""

    data_dir: Path
    ca: str  # created | imported | found
    root_fingerprint: str
    issuing_fingerprint: str
    passphrase_file: Path | None
    passphrase_generated: bool
    server_certificate: Path
    server_certificate_issued: bool
    hostnames: tuple[str, ...]
    database: str

    def as_json(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "ca": self.ca,
            "ca_created": self.ca != "found",
            "root_fingerprint_sha256": self.root_fingerprint,
            "issuing_fingerprint_sha256": self.issuing_fingerprint,
            "passphrase_file": str(self.passphrase_file) if self.passphrase_file else None,
            "passphrase_generated": self.passphrase_generated,
            "server_certificate": str(self.server_certificate),
            "server_certificate_issued": self.server_certificate_issued,
            "hostnames": list(self.hostnames),
            "database": self.database,
        }

    def lines(self) -> list[str]:
        ca_dir = self.data_dir / "ca"
        verb = "found existing" if self.ca == "found" else self.ca
        out = [f"{verb} CA in {ca_dir} (root SHA-256 {self.root_fingerprint})"]
        if self.passphrase_generated:
            out.append(f"generated the CA key passphrase file {self.passphrase_file} (mode 0600);"
                       " back it up: the CA keys cannot be unlocked without it")
        verb = "issued" if self.server_certificate_issued else "kept"
        out.append(f"{verb} server certificate {self.server_certificate} for "
                   f"{', '.join(self.hostnames)}")
        out.append(f"registry ready: {self.database}")
        return out


def initialize(fleet: Fleet, *, adopt: Callable[[Settings], CA] | None = None) -> InitReport:
    """Create whatever is missing; never replaces an existing CA.

    *adopt* stores an existing CA (``fleet ca import``) instead of generating one.
    """
    settings = fleet.settings
    paths = Paths.of(settings)
    private_dir(settings.data_dir, tighten=True)  # 0700, also one made before Fleet did
    from_env = bool(os.environ.get(PASSPHRASE_ENV))
    had_passphrase_file = paths.passphrase.exists()
    if adopt is not None:
        ca, origin = adopt(settings), "imported"
    else:
        ca, created = init_ca(settings, now=utcnow())
        origin = "created" if created else "found"
    issued = ensure_server_certificate(settings, ca, now=utcnow())
    fleet.create_registry()  # or applies the migrations to the one in place
    ensure_key(settings)  # the audit checkpoint key (fleet.checkpoints)
    generated = origin != "found" and not from_env and not had_passphrase_file
    return InitReport(
        data_dir=settings.data_dir, ca=origin,
        root_fingerprint=fingerprint_sha256(ca.root),
        issuing_fingerprint=fingerprint_sha256(ca.issuing),
        passphrase_file=None if from_env else paths.passphrase,
        passphrase_generated=generated,
        server_certificate=paths.server_cert, server_certificate_issued=issued,
        hostnames=settings.hostnames,
        database=make_url(settings.effective_database_url).render_as_string(hide_password=True),
    )


def init(
    ctx: typer.Context,
    hostname: Annotated[list[str] | None, typer.Option(
        "--hostname", help="DNS name or IP address for the server certificate (repeatable).",
        show_default="config")] = None,
    export_root_key: Annotated[Path | None, typer.Option(
        "--export-root-key", metavar="FILE", dir_okay=False,
        help="Move the root CA key to FILE (outside the data dir) to keep it offline; "
        "`fleet ca rotate-issuing --root-key FILE` needs it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create the CA, the server certificate and the registry (idempotent)."""
    fleet = fleet_of(ctx)
    if hostname:
        fleet.override(hostnames=tuple(hostname))
    if export_root_key is not None:  # refused before anything is created
        check_root_key_target(fleet.settings, export_root_key)
    report = initialize(fleet)
    if export_root_key is not None:
        fleet.authority.export_root_key(actor=fleet.actor, out=export_root_key, remove=True)
    if as_json:
        exported = {"root_key_exported_to": str(export_root_key)} if export_root_key else {}
        emit_json({**report.as_json(), **exported})
        return
    for line in report.lines():
        say(line)
    if export_root_key is not None:
        say(f"moved the root CA key to {export_root_key}: keep it (and the CA passphrase) "
            "offline; the data dir holds no copy")
