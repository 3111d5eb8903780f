"""``fleet ca``: the root and issuing CAs; import, rotate, retire, keep the root key offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from fleet.authority import IssuingStatus
from fleet.ca import CA, IssuingState, Paths, import_ca, load_trust
from fleet.cli.context import fleet_of
from fleet.cli.init import initialize
from fleet.cli.output import command_group, emit_json, fields, iso, note, say
from fleet.pki import fingerprint_sha256
from fleet.pki.keys import describe_key
from fleet.settings import Settings, format_duration

app = command_group("The fleet CA: the root and its issuing CAs.")

RootKeyPassphrase = Annotated[Path | None, typer.Option(
    "--root-key-passphrase-file", exists=True, dir_okay=False, readable=True,
    help="File holding the root key's own passphrase (default: the CA passphrase, "
    "FLEET_CA_PASSPHRASE or the passphrase file).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RESTART = ("restart `fleet serve est` and `fleet serve broker` (or `fleet up`): they load "
           "the CA when they start")


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


def _describe_status(status: IssuingStatus) -> dict[str, Any]:
    issuing = status.issuing
    return {"number": issuing.number, "state": issuing.state.value,
            **describe(issuing.certificate), "crl": issuing.crl_path,
            "usable_certificates": status.usable, "usable_until": iso(status.usable_until)}


def _passphrase(path: Path | None) -> bytes | None:
    return path.read_bytes().rstrip(b"\r\n") if path is not None else None


@app.command("show")
def show(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Show the root and every issuing CA with its state (active, retiring, retired),
    validity, fingerprint and the certificates of it still usable."""
    fleet = fleet_of(ctx)
    settings = fleet.require_initialized()
    trust = load_trust(settings)
    report = fleet.authority.issuing_report()
    paths = Paths.of(settings)
    root_key = "data dir" if paths.root_key.exists() else "offline"
    if as_json:
        emit_json({"root": describe(trust.root), "issuing": describe(trust.issuing),
                   "issuing_cas": [_describe_status(s) for s in report],
                   "root_key": root_key, "chain": str(paths.chain)})
        return
    say("root CA")
    fields({**describe(trust.root), "key": f"in {paths.root_key}" if root_key == "data dir"
            else "kept offline (rotation needs --root-key FILE)"})
    for status in report:
        facts = _describe_status(status)
        say("")
        say(f"issuing CA {facts.pop('number')} ({facts.pop('state')})")
        if status.issuing.state is IssuingState.RETIRING:
            facts["retire"] = _retire_hint(status)
        fields(facts)
    say("")
    say(f"chain: {paths.chain}")


def _retire_hint(status: IssuingStatus) -> str:
    command = f"fleet ca retire-issuing {status.issuing.number}"
    if status.retirable:
        return f"now, none of its certificates is usable any more ({command})"
    return f"after {iso(status.usable_until)}, when its last certificate expires ({command})"


@app.command("rotate-issuing")
def rotate_issuing(
    ctx: typer.Context,
    root_key: Annotated[Path | None, typer.Option(
        "--root-key", exists=True, dir_okay=False, readable=True,
        help="The root CA key, when it is kept offline (fleet ca export-root-key).")] = None,
    root_key_passphrase_file: RootKeyPassphrase = None,
    as_json: AsJson = False,
) -> None:
    """Make a new issuing CA under the same root; it signs every certificate from now on.

    The current one stays trusted (chain, EST and broker) until it is retired: devices move
    over at their next renewal.
    """
    fleet = fleet_of(ctx)
    ca = fleet.authority.rotate_issuing(actor=fleet.actor, root_key_file=root_key,
                                        root_key_passphrase=_passphrase(root_key_passphrase_file))
    previous = ca.retiring[0]
    settings = fleet.settings
    if as_json:
        emit_json({"active": {"number": ca.number, **describe(ca.issuing)},
                   "retiring": [{"number": r.number, **describe(r.certificate)}
                                for r in ca.retiring],
                   "chain": str(Paths.of(settings).chain),
                   "server_certificate": str(Paths.of(settings).server_cert)})
        return
    say(f"issuing CA {ca.number} is active: {ca.issuing.subject.rfc4514_string()} "
        f"(SHA-256 {fingerprint_sha256(ca.issuing)}), valid until "
        f"{iso(ca.issuing.not_valid_after_utc)}")
    longest = max(settings.device_lifetime, settings.service_lifetime)
    say(f"issuing CA {previous.number} stays trusted in its overlap: its devices move over at "
        f"their next renewal; retire it once its certificates have expired (at most "
        f"{format_duration(longest)} from now): fleet ca retire-issuing {previous.number}")
    say(f"reissued the server certificate {Paths.of(settings).server_cert}; {RESTART}")


@app.command("retire-issuing")
def retire_issuing(
    ctx: typer.Context,
    number: Annotated[int | None, typer.Argument(
        metavar="[N]", min=1, help="The issuing CA to retire (default: the only one in its "
        "overlap).", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Retire it although certificates of it are still usable: they are "
        "revoked (cessationOfOperation) and those devices must enroll again.")] = False,
    as_json: AsJson = False,
) -> None:
    """Stop trusting an issuing CA that is in its overlap; its key is removed."""
    fleet = fleet_of(ctx)
    retirement = fleet.authority.retire_issuing(actor=fleet.actor, number=number, force=force)
    issuing = retirement.issuing
    if as_json:
        emit_json({"number": issuing.number, "state": issuing.state.value,
                   **describe(issuing.certificate), "revoked": retirement.revoked})
        return
    say(f"retired issuing CA {issuing.number} (SHA-256 {fingerprint_sha256(issuing.certificate)})"
        ": it is trusted no more and its key is removed")
    if retirement.revoked:
        say(f"revoked {len(retirement.revoked)} certificate(s) of it that were still usable "
            "(cessationOfOperation): those devices must enroll again with a token")
    note(RESTART)


@app.command("export-root-key")
def export_root_key(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(
        "--out", metavar="FILE", dir_okay=False,
        help="Where the root key goes (outside the data dir; mode 0600).")],
    remove: Annotated[bool, typer.Option(
        "--remove", help="Then delete ca/root.key: the data dir keeps no copy.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
    root_key_passphrase_file: Annotated[Path | None, typer.Option(
        "--root-key-passphrase-file", exists=True, dir_okay=False, readable=True,
        help="Encrypt FILE with this passphrase instead of the CA passphrase.")] = None,
) -> None:
    """Write the root CA key to a file, to keep it offline; rotation then asks for it."""
    fleet = fleet_of(ctx)
    fleet.authority.export_root_key(actor=fleet.actor, out=out, remove=remove, force=force,
                                    passphrase=_passphrase(root_key_passphrase_file))
    say(f"wrote the root CA key to {out}")
    if remove:
        note(f"removed {Paths.of(fleet.settings).root_key}: keep {out} (and its passphrase) "
             "offline; `fleet ca rotate-issuing --root-key FILE` needs it")


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
    as_json: AsJson = False,
) -> None:
    """Adopt an existing CA instead of generating one (refused if a CA exists)."""
    passphrase = _passphrase(key_passphrase_file)

    def adopt(settings: Settings) -> CA:
        return import_ca(settings, cert_pem=cert.read_bytes(), key_pem=key.read_bytes(),
                         key_passphrase=passphrase)

    fleet = fleet_of(ctx)
    report = initialize(fleet, adopt=adopt)
    if as_json:
        trust = load_trust(fleet.settings)
        emit_json({"root": describe(trust.root), "issuing": describe(trust.issuing),
                   "init": report.as_json()})
        return
    for line in report.lines():
        say(line)

