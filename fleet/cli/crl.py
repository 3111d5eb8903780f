"""``fleet crl``: the current certificate revocation list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization

from fleet.cli.context import fleet_of
from fleet.cli.output import note
from fleet.files import write_public


def crl(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False, help="Write to this file instead of stdout.")] = None,
    der: Annotated[bool, typer.Option("--der", help="DER instead of PEM.")] = False,
) -> None:
    """Print the CRL signed by the issuing CA (PEM on stdout by default)."""
    current = fleet_of(ctx).authority.current_crl()
    data = current.public_bytes(serialization.Encoding.DER if der
                                else serialization.Encoding.PEM)
    if out is None:
        typer.echo(data, nl=False)
        return
    write_public(out, data)
    note(f"wrote CRL to {out} ({len(list(current))} revoked certificate(s))")
