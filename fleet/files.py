"""Files on disk: private ones are 0600 in 0700 directories whatever the process umask.

Everything Fleet keeps under its data dir is private: the registry database (and the -wal and
-shm files SQLite gives the database file's mode), the CA keys and certificates, the
passphrase, the server key and certificate. Outside it, what the CLI hands out as a secret
(token files, service keys) is private too; certificates and CRLs written for others to read
are public and follow the umask.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
READABLE_FILE = 0o644


def private_dir(path: Path, *, tighten: bool = False) -> Path:
    """Make *path* a directory; every directory created here (parents too) is 0700.

    With *tighten*, an existing *path* is brought to 0700 as well: only for directories that
    are Fleet's own, never for one an operator names as a destination.
    """
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # created meanwhile by someone else: not ours to change
        os.chmod(directory, PRIVATE_DIR)  # mkdir's mode is masked by the umask
    if tighten and not missing:
        os.chmod(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """Create *path* empty with mode 0600 unless it exists (a database file before SQLite
    opens it, so that SQLite gives its -wal and -shm files the same mode)."""
    private_dir(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return path
    try:
        os.fchmod(descriptor, PRIVATE_FILE)
    finally:
        os.close(descriptor)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace *path* with *data*, mode 0600 from the first byte; a missing directory is
    made 0700. Readers see the old content or the new, never a mix, and so does whoever
    reads it after a crash: the data is synced before the rename, the rename after it."""
    private_dir(path.parent)
    _replace(path, data, PRIVATE_FILE)


def write_readable(path: Path, data: bytes) -> None:
    """Replace *path* with *data*, mode 0644 whatever the umask, as :func:`write_private`
    does (never half written, synced), in a directory that must exist: a file another
    service's user reads again while it runs (the CRL of ``fleet crl --watch``)."""
    _replace(path, data, READABLE_FILE)


def _replace(path: Path, data: bytes, mode: int) -> None:
    # mkstemp creates the file 0600 whatever the umask.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if mode != PRIVATE_FILE:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_public(path: Path, data: bytes) -> None:
    """Replace *path* with *data* (mode from the umask), for files others are meant to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
