"""The ``fleet`` command: operators' tool for the CA, the registry and the services.

Every command is thin: policy lives in fleet.authority, fleet.registry and fleet.ca.
A refusal prints one line ``error: <reason>`` on stderr and exits non-zero:

    0  success
    1  refused: the operation does not apply, a check failed, the CA cannot be used
    2  usage error: unknown option, missing or malformed value (reported by Typer)
    3  not found: unknown device, certificate or token
    4  configuration error: a setting has a bad value (the message names the key)
    5  registry unavailable: the database cannot be reached; retry later
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

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
    health,
    init,
    serve,
    sim,
    token,
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
    """The root group: turns Fleet errors from any subcommand into a line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(exit_code(error)) from None
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            typer.echo(f"error: {error.strerror or error}{where}", err=True)
            raise typer.Exit(EXIT_REFUSED) from None


app = typer.Typer(
    name="fleet", cls=FleetGroup, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    help="Enroll IoT devices over EST, run the fleet CA and the mTLS MQTT broker.",
)


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar="FLEET_DATA_DIR", show_default="./fleet-data",
        help="Directory holding the CA, server certificate and SQLite registry.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="FLEET_CONFIG", show_default="config/fleet.toml",
        help="Configuration file (TOML).")] = None,
) -> None:
    """Fleet operator CLI."""
    fleet = Fleet(config_file=config, data_dir=data_dir)
    ctx.obj = fleet
    ctx.call_on_close(fleet.close)


app.command("init")(init.init)
app.command("up")(serve.up)
app.add_typer(serve.app, name="serve")
app.add_typer(ca.app, name="ca")
app.add_typer(token.app, name="token")
app.add_typer(device.app, name="device")
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
