"""The checkpoint file: ``<data_dir>/audit-checkpoints.jsonl``, append-only JSON lines, 0600.

Line 1 is a keyed header naming the file with a random id; every further line is one
checkpoint, which records the id of the file it went to. ``fleet audit verify`` thus knows
which registry rows must have a line here and which went to another data dir's file (EST
replicas on other hosts sharing one PostgreSQL registry).

A writer holds an exclusive lock (flock) on the file from before it commits a checkpoint to
the registry until its line is appended; a reader holds a shared lock while it reads the
registry's checkpoints and this file, so it never catches one place ahead of the other.
Each line is a single write() on a descriptor opened with O_APPEND, then fsync()ed: lines of
concurrent writers never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from fleet.checkpoints.key import create_private
from fleet.checkpoints.record import FILE_ID, Checkpoint, keyed, parse_time, timestamp
from fleet.errors import ConflictError
from fleet.settings import Settings

JOURNAL_NAME = "audit-checkpoints.jsonl"
HEADER_LABEL = "fleet-audit-checkpoint-file/1"
MAX_HEADER_BYTES = 4096


def journal_path(settings: Settings) -> Path:
    return settings.data_dir / JOURNAL_NAME


@dataclass(frozen=True, slots=True)
class Header:
    """The first line: the file's id and when it was made, keyed."""

    file: str
    created: datetime
    mac: str

    def authentic(self, key: bytes) -> bool:
        return secrets.compare_digest(self.mac, _header_mac(key, self.file, self.created))

    def line(self) -> bytes:
        return _line({"file": self.file, "created": timestamp(self.created), "mac": self.mac})

    @classmethod
    def of_json(cls, value: object) -> Header:
        if not isinstance(value, dict) or set(value) != {"file", "created", "mac"}:
            raise ValueError("expected an object with created, file, mac")
        if not isinstance(value["file"], str) or not FILE_ID.fullmatch(value["file"]):
            raise ValueError(f"file is not {FILE_ID.pattern}")
        if not isinstance(value["mac"], str):
            raise ValueError("mac is not a string")
        return cls(file=value["file"], created=parse_time(value["created"], "created"),
                   mac=value["mac"])


def _header_mac(key: bytes, file: str, created: datetime) -> str:
    return keyed(key, HEADER_LABEL, file, timestamp(created))


def _line(value: dict[str, object]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode() + b"\n"


@dataclass(slots=True)
class Contents:
    """The file as read: its header (if line 1 is one), its checkpoints and what is wrong."""

    header: Header | None = None
    checkpoints: list[tuple[int, Checkpoint]] = field(default_factory=list)
    """(line number, checkpoint) for every line that reads as a checkpoint."""
    problems: list[tuple[int, str]] = field(default_factory=list)
    """(line number, what is wrong) for every line that reads as neither."""


def parse(data: bytes) -> Contents:
    contents = Contents()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for number, raw in enumerate(lines, start=1):
        try:
            value = json.loads(raw)
        except ValueError:  # includes bytes that are not UTF-8
            contents.problems.append((number, "not JSON"))
            continue
        if number == 1:
            try:
                contents.header = Header.of_json(value)
                continue
            except ValueError as exc:
                contents.problems.append((number, f"not the file's header ({exc})"))
        try:
            contents.checkpoints.append((number, Checkpoint.of_json(value)))
        except ValueError as exc:
            if number > 1:
                contents.problems.append((number, f"not a checkpoint ({exc})"))
    return contents


class Appender:
    """Appends checkpoints to the file it holds locked; ``file`` is that file's id."""

    def __init__(self, descriptor: int, file: str) -> None:
        self._descriptor = descriptor
        self.file = file

    def __call__(self, checkpoint: Checkpoint) -> None:
        os.write(self._descriptor, _line(checkpoint.as_json()))
        os.fsync(self._descriptor)


@contextlib.contextmanager
def appending(path: Path, key: bytes, *, now: datetime) -> Iterator[Appender]:
    """The file locked for appending, created with its header if it does not exist; refused
    when its header is not one this key made (``fleet audit verify`` says more)."""
    if not path.exists():
        file = secrets.token_hex(16)
        create_private(path, Header(file=file, created=now,
                                    mac=_header_mac(key, file, now)).line())
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        first = os.pread(descriptor, MAX_HEADER_BYTES, 0).split(b"\n", 1)[0]
        try:
            header = Header.of_json(json.loads(first))
        except ValueError:
            header = None
        if header is None or not header.authentic(key):
            raise ConflictError(f"the audit checkpoint file {path} does not start with a "
                                "header made with this key; run `fleet audit verify`")
        yield Appender(descriptor, header.file)
    finally:
        os.close(descriptor)  # releases the lock


@contextlib.contextmanager
def reading(path: Path) -> Iterator[IO[bytes] | None]:
    """The file open for reading under a shared lock (None when it does not exist)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        yield None
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        yield handle
