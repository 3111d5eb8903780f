"""``fleet crl``: the certificate revocation lists, one per issuing CA in use.

Until a rotation there is one issuing CA and one CRL. While an earlier issuing CA is in its
overlap, each signs the CRL of its own certificates: the PEM output holds one block per
issuing CA, the active one first (OpenSSL, Mosquitto and most relying parties read every CRL
of a file); DER holds one CRL, so it needs ``--issuer N`` then.

With ``--watch`` the command stays and keeps ``--out`` current, rewriting it on every
revocation and signalling ``--signal PID`` after each rewrite (fleet.integrations.crl_watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization

from fleet import pki
from fleet.authority import Authority, SignedCrl
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
    watch: Annotated[bool, typer.Option(
        "--watch", help="Stay and rewrite --out on every revocation (and before the CRL "
        "runs out), until SIGTERM.")] = False,
    signal_pid: Annotated[int | None, typer.Option(
        "--signal", metavar="PID", min=1, help="With --watch: send SIGHUP to PID after each "
        "rewrite (Mosquitto reads its crlfile again); exits 1 when PID exits.")] = None,
) -> None:
    """Print the CRLs signed by the issuing CAs in use (PEM on stdout by default)."""
    if watch and out is None:
        raise ConflictError("--watch keeps a file current: name it with --out FILE")
    if signal_pid is not None and not watch:
        raise ConflictError("--signal PID goes with --watch")
    authority = fleet_of(ctx).authority
    if watch:
        assert out is not None
        _watch(authority, out, force=force, der=der, issuer=issuer, pid=signal_pid)
        return
    with claimed(out, force=force):  # refused before a CRL is signed
        data, signed = _rendered(authority, der=der, issuer=issuer)
        if out is None:
            typer.echo(data, nl=False)
            return
        write_public(out, data)
    note(f"wrote {len(signed)} CRL(s) to {out} ({_counts(signed)})")


def _rendered(authority: Authority, *, der: bool,
              issuer: int | None) -> tuple[bytes, Sequence[SignedCrl]]:
    signed = authority.crls_of(issuer)
    if der and len(signed) > 1:
        numbers = " and ".join(str(s.issuing.number) for s in signed)
        raise ConflictError(f"issuing CAs {numbers} are in use, each with its own CRL, and "
                            "DER holds one: choose it with --issuer N, or use PEM, which "
                            "holds all")
    data = signed[0].crl.public_bytes(serialization.Encoding.DER) if der \
        else pki.crls_pem(s.crl for s in signed)
    return data, signed


def _counts(signed: Sequence[SignedCrl]) -> str:
    return ", ".join(f"issuing CA {s.issuing.number}: {len(list(s.crl))} revoked"
                     for s in signed)


def _watch(authority: Authority, out: Path, *, force: bool, der: bool, issuer: int | None,
           pid: int | None) -> None:
    from fleet.integrations.crl_watch import CrlWatch, Target

    target = Target(pid) if pid is not None else None  # refused before anything is written
    watch = CrlWatch(authority=authority, out=out, target=target, report=note,
                     render=lambda: _rendered(authority, der=der, issuer=issuer))
    with claimed(out, force=force):  # the first write follows the output-file rules
        after = authority.last_revocation_id()  # read first: nothing is missed in between
        watch.rewrite()

    async def run() -> None:
        follow = asyncio.create_task(watch.follow(after=after))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, follow.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await follow

    try:
        asyncio.run(run())
    finally:
        if target is not None:
            target.close()
