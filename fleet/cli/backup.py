"""``fleet backup`` and ``fleet restore``: one archive holds what it takes to bring a Fleet
back (fleet.backup)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet import backup as archive
from fleet.ca import PASSPHRASE_ENV, Paths
from fleet.cli.context import fleet_of
from fleet.cli.output import emit_json, note, say
from fleet.registry import utcnow


def backup(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(
        "--out", metavar="FILE", help="The archive to write (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Back up the CA material, the registry (SQLite, online) and the configuration."""
    settings = fleet_of(ctx).require_initialized()
    manifest = archive.create(settings, out, now=utcnow(), force=force)
    if as_json:
        emit_json({"file": str(out), **manifest.as_json()})
    else:
        say(f"wrote {out}: {len(manifest.files)} files from {settings.data_dir}")
    passphrase = Paths.of(settings).passphrase
    if not passphrase.is_relative_to(settings.data_dir) or not passphrase.exists():
        note(f"the CA key passphrase ({PASSPHRASE_ENV} or {passphrase}) is not in the "
             "backup: keep it separately, the CA keys cannot be unlocked without it")
    else:
        note("the backup holds the CA keys and their passphrase: store it as you would the "
             "CA itself")
    if manifest.database != "sqlite":
        note(f"the {manifest.database} registry is not in the backup: back it up with "
             "pg_dump --format=custom (docs/postgresql.md)")


def restore(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(
        metavar="FILE", exists=True, dir_okay=False, readable=True,
        help="An archive written by `fleet backup`.")],
    config_dir: Annotated[Path | None, typer.Option(
        "--config-dir", metavar="DIR", help="Where the configuration goes "
        "(default: DATA_DIR/config).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Restore a backup into an empty data dir (the global --data-dir)."""
    fleet = fleet_of(ctx)
    data_dir = fleet.settings.data_dir
    target = (config_dir or data_dir / "config").resolve()
    manifest = archive.restore(file, data_dir, target)
    if as_json:
        emit_json({"data_dir": str(data_dir), "config_dir": str(target),
                   **manifest.as_json()})
        return
    say(f"restored {len(manifest.files)} files of a backup made {manifest.created_at} "
        f"(Fleet {manifest.fleet_version}, trust domain {manifest.trust_domain}) into "
        f"{data_dir}")
    say(f"configuration in {target}: run fleet --data-dir {data_dir} "
        f"--config {target / 'fleet.toml'} ...")
    if manifest.database != "sqlite":
        note(f"restore the {manifest.database} registry with pg_restore before starting "
             "the services (docs/postgresql.md)")
