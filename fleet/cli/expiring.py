"""``fleet expiring``: current certificates that expire soon.

A superseded certificate is left out: it stops being usable at the end of its grace
(``certificates.superseded_grace``), not at its notAfter, and its device already holds the
certificate that replaced it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from fleet.cli import params
from fleet.cli.cert import certificate_json, certificates_table
from fleet.cli.context import fleet_of
from fleet.cli.output import emit_json
from fleet.registry import CertificateStatus, utcnow
from fleet.registry import certificates as certs_db

DEFAULT_WINDOW = timedelta(days=7)


def expiring(
    ctx: typer.Context,
    within: Annotated[timedelta | None, typer.Option(
        "--within", parser=params.duration, metavar="DURATION", show_default="7d",
        help="Window from now, e.g. 12h, 30d.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Active certificates that expire within the window, soonest first."""
    now = utcnow()
    window = within or DEFAULT_WINDOW
    fleet = fleet_of(ctx)
    with fleet.session() as session:
        rows = certs_db.list_certificates(session=session, expiring_before=now + window,
                                          status=CertificateStatus.ACTIVE)
        objects = [certificate_json(row, grace=fleet.settings.superseded_grace)
                   for row in sorted(rows, key=lambda r: r.not_after) if row.not_after > now]
    if as_json:
        emit_json(objects)
    else:
        certificates_table("Certificates expiring", objects)
