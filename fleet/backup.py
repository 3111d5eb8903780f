"""Backups of one Fleet: the data dir (CA material, server certificate, audit anchors, broker
state), a consistent online copy of the SQLite registry, and the configuration in use.

A backup is a gzip'd tar archive written with mode 0600:

- ``MANIFEST.json``: the format, when and by which version it was made, the database kind,
  the trust domain, and the SHA-256 of every other member;
- ``data/...``: the data dir, with ``data/fleet.db`` taken through SQLite's online backup API
  (consistent while services keep writing; its -wal and -shm files are not copied);
- ``config/fleet.toml`` and ``config/acl.toml``: the configuration and topic policy in use.

With PostgreSQL the registry is not in the archive (the manifest says so): back it up with
``pg_dump`` (docs/postgresql.md). A restore writes into an empty data dir only, refuses any
member outside ``data/`` and ``config/``, links, special files and any member whose digest
differs from the manifest, and checks the restored SQLite file's integrity.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from sqlalchemy.engine import make_url

from fleet import __version__
from fleet.errors import FleetError
from fleet.settings import Settings

FORMAT = "fleet-backup/1"
MANIFEST = "MANIFEST.json"
DATABASE = "fleet.db"
_SKIPPED = frozenset({DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal"})


class BackupError(FleetError):
    """A backup cannot be made, or an archive cannot be restored."""


@dataclass(frozen=True, slots=True)
class Manifest:
    created_at: str
    fleet_version: str
    database: str  # sqlite | postgresql
    trust_domain: str
    files: dict[str, str]  # member name -> SHA-256

    def as_json(self) -> dict[str, object]:
        return {"format": FORMAT, "created_at": self.created_at,
                "fleet_version": self.fleet_version, "database": self.database,
                "trust_domain": self.trust_domain, "files": self.files}


def database_kind(settings: Settings) -> str:
    return make_url(settings.effective_database_url).get_backend_name()


def create(settings: Settings, out: Path, *, now: datetime, force: bool = False) -> Manifest:
    """Write a backup of *settings*' Fleet to *out* (never over an existing file unless
    *force*; the parent directory must exist)."""
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} is not a directory")
    if out.exists() and not force:
        raise BackupError(f"{out} exists; use --force to replace it")
    data_dir = settings.data_dir
    kind = database_kind(settings)
    with tempfile.TemporaryDirectory(prefix="fleet-backup-") as scratch:
        members: list[tuple[str, Path]] = []
        if kind == "sqlite":
            database = Path(make_url(settings.effective_database_url).database or "")
            if not database.is_file():
                raise BackupError(f"no registry at {database}: nothing to back up")
            snapshot = Path(scratch) / DATABASE
            _sqlite_snapshot(database, snapshot)
            members.append((f"data/{DATABASE}", snapshot))
        members += [(f"data/{p.relative_to(data_dir).as_posix()}", p)
                    for p in _data_files(data_dir)]
        members += [("config/fleet.toml", settings.config_file),
                    ("config/acl.toml", settings.acl_file)]
        files = {name: _sha256(path) for name, path in members}
        manifest = Manifest(created_at=now.isoformat(), fleet_version=__version__,
                            database=kind, trust_domain=settings.trust_domain, files=files)
        partial = out.with_name(f".{out.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
                _add_bytes(archive, MANIFEST, json.dumps(manifest.as_json(), indent=2).encode())
                for name, path in members:
                    archive.add(path, arcname=name, recursive=False, filter=_private)
                raw.flush()
                os.fsync(raw.fileno())
            partial.replace(out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return manifest


def restore(archive_path: Path, data_dir: Path, config_dir: Path) -> Manifest:
    """Restore *archive_path* into the empty (or missing) *data_dir*, and its configuration
    into *config_dir* (also empty or missing). A missing one is created in a directory that
    exists (or, for *config_dir*, in *data_dir*). Nothing is written unless every check
    passes."""
    for target in (data_dir, config_dir):
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise BackupError(f"{target} is not empty: restore into a new directory")
        if not target.exists() and not target.parent.is_dir() and target.parent != data_dir:
            raise BackupError(f"{target.parent} is not a directory")
    try:
        with tarfile.open(archive_path, mode="r:gz") as archive:
            manifest = _read_manifest(archive, archive_path)
            contents = dict(_verified_members(archive, manifest, archive_path))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BackupError(f"{archive_path} is not a Fleet backup: {error}") from None
    created: list[Path] = []
    try:
        for target in (data_dir, config_dir):
            if not target.exists():
                target.mkdir(mode=0o700)
                created.append(target)
            target.chmod(0o700)
        for name, content in contents.items():
            root, _, rest = name.partition("/")
            path = (data_dir if root == "data" else config_dir).joinpath(*rest.split("/"))
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
        if manifest.database == "sqlite":
            _check_integrity(data_dir / DATABASE)
    except BaseException:
        for target in (data_dir, config_dir):
            _empty(target, remove=target in created)
        raise
    return manifest


def _data_files(data_dir: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(data_dir):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if Path(root) == data_dir and name in _SKIPPED:
                continue
            if path.is_symlink() or not path.is_file():
                continue
            yield path


def _sqlite_snapshot(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as error:
        raise BackupError(f"cannot copy the registry {source}: {error}") from None
    finally:
        dst.close()
        src.close()


def _check_integrity(database: Path) -> None:
    connection = sqlite3.connect(database)
    try:
        (result,) = connection.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.Error as error:
        raise BackupError(f"the restored registry is not an SQLite database: {error}") from None
    finally:
        connection.close()
    if result != "ok":
        raise BackupError(f"the restored registry fails its integrity check: {result}")


def _read_manifest(archive: tarfile.TarFile, path: Path) -> Manifest:
    try:
        member = archive.getmember(MANIFEST)
        stream = archive.extractfile(member)
        document = json.loads(stream.read() if stream is not None else b"")
    except (KeyError, ValueError, tarfile.TarError):
        raise BackupError(f"{path} has no readable {MANIFEST}: not a Fleet backup") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BackupError(f"{path} is not a {FORMAT} archive")
    files = document.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BackupError(f"{path}: the manifest lists no files")
    return Manifest(created_at=str(document.get("created_at")),
                    fleet_version=str(document.get("fleet_version")),
                    database=str(document.get("database")),
                    trust_domain=str(document.get("trust_domain")), files=files)


def _verified_members(archive: tarfile.TarFile, manifest: Manifest,
                      path: Path) -> Iterator[tuple[str, bytes]]:
    seen: set[str] = set()
    for member in archive.getmembers():
        name = member.name
        if name == MANIFEST:
            continue
        parts = PurePosixPath(name).parts
        if (not member.isfile() or len(parts) < 2 or parts[0] not in ("data", "config")
                or any(p in ("", ".", "..") for p in parts) or name.startswith("/")):
            raise BackupError(f"{path}: refusing member {name!r} (only regular files under "
                              "data/ and config/)")
        expected = manifest.files.get(name)
        stream = archive.extractfile(member)
        content = stream.read() if stream is not None else b""
        if expected is None or hashlib.sha256(content).hexdigest() != expected:
            raise BackupError(f"{path}: {name} does not match the manifest; the archive is "
                              "damaged or was altered")
        seen.add(name)
        yield name, content
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise BackupError(f"{path}: missing {', '.join(missing)}")


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o600
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(data))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _empty(path: Path, *, remove: bool) -> None:
    """Undo a failed restore: what it wrote under *path* (empty before), and *path* itself
    when the restore created it."""
    if not path.exists():
        return
    for root, dirs, names in os.walk(path, topdown=False):
        for name in names:
            (Path(root) / name).unlink()
        for name in dirs:
            (Path(root) / name).rmdir()
    if remove:
        path.rmdir()
