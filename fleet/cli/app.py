"""The ``fleet`` command: operators' tool for the CA, the registry and the services.

Every command is thin: policy lives in fleet.authority, fleet.registry and fleet.ca.
A refusal prints one line ``error: <reason>`` on stderr (under ``--json`` a JSON object,
``{"error": "<reason>", "exit_code": N}``) and exits non-zero:

    0  success
    1  refused: the operation does not apply, a check failed, the CA cannot be used
    2  usage error: unknown option, missing or malformed value (reported by Typer)
    3  not found: unknown device, certificate or token
    4  configuration error: a setting has a bad value (the message names the key)
    5  registry unavailable: the database cannot be reached; retry later
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

from fleet import __version__
from fleet.cli import (
    audit,
    backup,
    ca,
    cert,
    crl,
    device,
    diagnose,
    expiring,
    export,
    group,
    health,
    init,
    serve,
    sim,
    token,
    vendor,
)
from fleet.cli.context import Fleet
from fleet.errors import ConfigError, FleetError, NotFoundError, RegistryUnavailableError

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFIG = 4
EXIT_UNAVAILABLE = 5


def exit_code(error: FleetError) -> int:
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, ConfigError):
        return EXIT_CONFIG
    if isinstance(error, RegistryUnavailableError):
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED


class FleetGroup(TyperGroup):
    """The root group: turns Fleet errors from any subcommand into a line and an exit code;
    under ``--json`` into a JSON object, usage errors included."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[JSON_FLAG] = JSON_FLAG in _command_arguments(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        as_json = bool(ctx.meta.get(JSON_FLAG))
        try:
            return super().invoke(ctx)
        except FleetError as error:
            fail(str(error), exit_code(error), as_json=as_json)
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            fail(f"{error.strerror or error}{where}", EXIT_REFUSED, as_json=as_json)
        except ClickException as error:
            if not as_json or isinstance(error, NoArgsIsHelpError):
                raise
            fail(error.format_message(), error.exit_code, as_json=True)


JSON_FLAG = "--json"


def _command_arguments(args: list[str]) -> list[str]:
    """The arguments before ``--`` (after it, ``--json`` would be a value)."""
    return args[:args.index("--")] if "--" in args else args


def fail(message: str, code: int, *, as_json: bool) -> NoReturn:
    """Report an error on stderr, as ``error: <message>`` or as JSON, and exit with *code*."""
    if as_json:
        typer.echo(json.dumps({"error": message, "exit_code": code}), err=True)
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


app = typer.Typer(
    name="fleet", cls=FleetGroup, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    help="Enroll IoT devices over EST, run the fleet CA and the mTLS MQTT broker.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fleet {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar="FLEET_DATA_DIR", show_default="./fleet-data",
        help="Directory holding the CA, server certificate and SQLite registry.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="FLEET_CONFIG", show_default="the one shipped with Fleet",
        help="Configuration file (TOML).")] = None,
    _version: Annotated[bool, typer.Option(
        "--version", is_eager=True, expose_value=False, callback=_print_version,
        help="Print Fleet's version and exit.")] = False,
) -> None:
    """Fleet operator CLI."""
    fleet = Fleet(config_file=config, data_dir=data_dir)
    ctx.obj = fleet
    ctx.call_on_close(fleet.close)


app.command("init")(init.init)
app.command("up")(serve.up)
app.add_typer(serve.app, name="serve")
app.add_typer(ca.app, name="ca")
app.add_typer(group.app, name="group")
app.add_typer(token.app, name="token")
app.add_typer(device.app, name="device")
app.add_typer(vendor.app, name="vendor")
app.add_typer(cert.app, name="cert")
app.command("crl")(crl.crl)
app.add_typer(audit.app, name="audit")
app.command("expiring")(expiring.expiring)
app.command("diagnose")(diagnose.diagnose)
app.add_typer(sim.app, name="sim")
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)
app.command("health")(health.health_command)
app.add_typer(export.app, name="export")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fleet")
