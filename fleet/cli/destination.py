"""Where commands write what the operator asks for (``--out``, ``--out-dir``, reports).

Two rules, for every command that writes a file: a file that exists is replaced only with
``--force``, and no directory is created on the way to it (a mistyped path is refused, not
made). A directory a command writes into (``--out DIR``) may itself be created, inside one
that exists.

Every check runs before the command does its work, so a refusal leaves nothing behind: no
token minted, no certificate issued, no simulation run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from fleet.errors import ConflictError
from fleet.files import PRIVATE_FILE

Force = Annotated[bool, typer.Option("--force", help="Replace output files that exist.")]


def check_file(path: Path, *, force: bool) -> None:
    """Refuse *path* as a file to write: in a directory that does not exist, a directory
    itself, or existing without *force*."""
    if not path.parent.is_dir():
        raise ConflictError(f"{path.parent} is not a directory")
    if path.is_dir():
        raise ConflictError(f"{path} is a directory")
    if not force and (path.exists() or path.is_symlink()):
        raise ConflictError(f"{path} exists; use --force to replace it")


@contextlib.contextmanager
def claimed(path: Path | None, *, force: bool) -> Iterator[None]:
    """Hold *path* (if given) for a command that works a while before it writes it: checked
    at once, and without *force* created empty (0600), so that nothing else takes it
    meanwhile; the command then replaces it (fleet.files). Still empty when the command
    fails, it is removed again."""
    if path is None:
        yield
        return
    check_file(path, force=force)
    if force:
        yield
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        raise ConflictError(f"{path} exists; use --force to replace it") from None
    placeholder = os.fstat(descriptor)
    os.close(descriptor)
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            now = path.stat()
            if (now.st_ino, now.st_dev, now.st_size) == (placeholder.st_ino,
                                                         placeholder.st_dev, 0):
                path.unlink()
        raise


def output_directory(path: Path, *, force: bool) -> Path:
    """*path* as a directory to write into: created if missing (inside one that exists),
    empty unless *force*."""
    path = path.resolve()
    if not path.parent.is_dir():
        raise ConflictError(f"{path.parent} is not a directory")
    if path.exists() and not path.is_dir():
        raise ConflictError(f"{path} is not a directory")
    if path.exists() and any(path.iterdir()) and not force:
        raise ConflictError(f"{path} is not empty; use --force to write into it")
    path.mkdir(mode=0o750, exist_ok=True)
    return path
