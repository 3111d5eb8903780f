"""``fleet crl``: the certificate revocation lists, one per issuing CA in use.

Until a rotation there is one issuing CA and one CRL. While an earlier issuing CA is in its
overlap, each signs the CRL of its own certificates: the PEM output holds one block per
issuing CA, the active one first (OpenSSL, Mosquitto and most relying parties read every CRL
of a file); DER holds one CRL, so it needs ``--issuer N`` then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization

from fleet import pki
from fleet.cli.context import fleet_of
from fleet.cli.destination import Force, claimed
from fleet.cli.output import note
from fleet.errors import ConflictError
from fleet.files import write_public


def crl(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False, help="Write to this file instead of stdout (a new one unless "
        "--force; its directory must exist).")] = None,
    force: Force = False,
    der: Annotated[bool, typer.Option(
        "--der", help="DER instead of PEM (one CRL: needs --issuer while two issuing CAs "
        "are in use).")] = False,
    issuer: Annotated[int | None, typer.Option(
        "--issuer", metavar="N", min=1,
        help="Only the CRL of issuing CA N (see `fleet ca show`).")] = None,
) -> None:
    """Print the CRLs signed by the issuing CAs in use (PEM on stdout by default)."""
    with claimed(out, force=force):  # refused before a CRL is signed
        signed = fleet_of(ctx).authority.crls_of(issuer)
        if der and len(signed) > 1:
            numbers = " and ".join(str(s.issuing.number) for s in signed)
            raise ConflictError(f"issuing CAs {numbers} are in use, each with its own CRL, and "
                                "DER holds one: choose it with --issuer N, or use PEM, which "
                                "holds all")
        data = signed[0].crl.public_bytes(serialization.Encoding.DER) if der \
            else pki.crls_pem(s.crl for s in signed)
        if out is None:
            typer.echo(data, nl=False)
            return
        write_public(out, data)
    counts = ", ".join(f"issuing CA {s.issuing.number}: {len(list(s.crl))} revoked"
                       for s in signed)
    note(f"wrote {len(signed)} CRL(s) to {out} ({counts})")
