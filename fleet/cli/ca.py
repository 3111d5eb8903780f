"""``fleet ca``: show the CA certificates, import an existing enterprise CA."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from fleet.ca import CA, Paths, import_ca
from fleet.cli.context import fleet_of
from fleet.cli.init import initialize
from fleet.cli.output import command_group, emit_json, fields, iso, say
from fleet.errors import CAError
from fleet.pki import fingerprint_sha256
from fleet.pki.keys import describe_key
from fleet.settings import Settings

app = command_group("The fleet CA: root and issuing certificates.")

def describe(cert: x509.Certificate) -> dict[str, Any]:
    """The facts an operator compares when checking which CA is in use."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "fingerprint_sha256": fingerprint_sha256(cert),
        "not_before": iso(cert.not_valid_before_utc),
        "not_after": iso(cert.not_valid_after_utc),
        "key_type": describe_key(cert.public_key()),
    }


def _ca_certificates(settings: Settings) -> dict[str, x509.Certificate]:
    """Root and issuing certificates from disk; the keys stay locked."""
    paths = Paths.of(settings)
    if not paths.root.exists() or not paths.issuing.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` or `fleet ca import`")
    return {
        "root": x509.load_pem_x509_certificate(paths.root.read_bytes()),
        "issuing": x509.load_pem_x509_certificate(paths.issuing.read_bytes()),
    }


def _print(certs: dict[str, x509.Certificate], *, as_json: bool, chain: Path) -> None:
    facts = {role: describe(cert) for role, cert in certs.items()}
    if as_json:
        emit_json({**facts, "chain": str(chain)})
        return
    for role, data in facts.items():
        say(f"{role} CA")
        fields(data)
        say("")
    say(f"chain: {chain}")


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the root and issuing CA: subject, fingerprint, validity, key type."""
    settings = fleet_of(ctx).settings
    _print(_ca_certificates(settings), as_json=as_json, chain=Paths.of(settings).chain)


@app.command("import")
def import_(
    ctx: typer.Context,
    cert: Annotated[Path, typer.Option(
        "--cert", exists=True, dir_okay=False, readable=True,
        help="PEM of the issuing CA, followed by its chain up to the self-signed root.")],
    key: Annotated[Path, typer.Option(
        "--key", exists=True, dir_okay=False, readable=True,
        help="PEM private key of the issuing CA.")],
    key_passphrase_file: Annotated[Path | None, typer.Option(
        "--key-passphrase-file", exists=True, dir_okay=False, readable=True,
        help="File holding the passphrase of --key, if it is encrypted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Adopt an existing CA instead of generating one (refused if a CA exists)."""
    passphrase = key_passphrase_file.read_bytes().rstrip(b"\r\n") if key_passphrase_file \
        else None

    def adopt(settings: Settings) -> CA:
        return import_ca(settings, cert_pem=cert.read_bytes(), key_pem=key.read_bytes(),
                         key_passphrase=passphrase)

    fleet = fleet_of(ctx)
    report = initialize(fleet, adopt=adopt)
    if as_json:
        emit_json({**{role: describe(c) for role, c in _ca_certificates(fleet.settings).items()},
                   "init": report.as_json()})
        return
    for line in report.lines():
        say(line)
