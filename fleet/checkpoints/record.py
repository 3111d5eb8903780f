"""A checkpoint: the audit chain's head at one moment, named by its writer, keyed (HMAC-SHA256).

The MAC covers every field, so a checkpoint can be neither forged nor moved to another
position, writer, time or file without the key. It is computed over a JSON array of the
fields behind a label naming the record type and its version (domain separation).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from fleet.registry.models import AuditCheckpoint

CHECKPOINT_LABEL = "fleet-audit-checkpoint/1"
DIGEST = re.compile(r"[0-9a-f]{64}")
FILE_ID = re.compile(r"[0-9a-f]{32}")
MAX_WRITER = 128


def keyed(key: bytes, label: str, *fields: object) -> str:
    """HMAC-SHA256 (hex) of *fields* behind *label*."""
    message = json.dumps([label, *fields], separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def timestamp(moment: datetime) -> str:
    """The one spelling of a time that is keyed: UTC, to the microsecond."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Writer *writer*'s *seq*-th checkpoint: event *event_id* had digest *head* at *at*."""

    writer: str
    seq: int
    event_id: int
    head: str
    at: datetime
    file: str
    mac: str

    @property
    def name(self) -> str:
        return f"{self.writer}#{self.seq}"

    @property
    def key(self) -> tuple[str, int]:
        """What identifies a checkpoint in the registry and in the file alike."""
        return self.writer, self.seq

    def authentic(self, key: bytes) -> bool:
        return hmac.compare_digest(self.mac, _mac(key, self.writer, self.seq, self.event_id,
                                                  self.head, self.at, self.file))

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "at": timestamp(self.at)}

    def row(self) -> AuditCheckpoint:
        return AuditCheckpoint(**asdict(self))

    @classmethod
    def of_row(cls, row: AuditCheckpoint) -> Checkpoint:
        return cls(writer=row.writer, seq=row.seq, event_id=row.event_id, head=row.head,
                   at=row.at, file=row.file, mac=row.mac)

    @classmethod
    def of_json(cls, value: object) -> Checkpoint:
        """Read one line of the checkpoint file; ValueError says what is wrong with it."""
        if not isinstance(value, dict) or set(value) != _FIELDS:
            raise ValueError(f"expected an object with {', '.join(sorted(_FIELDS))}")
        writer, seq, event_id = value["writer"], value["seq"], value["event_id"]
        if not isinstance(writer, str) or not 0 < len(writer) <= MAX_WRITER:
            raise ValueError("writer is not a name")
        for name, number in (("seq", seq), ("event_id", event_id)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError(f"{name} is not a positive integer")
        for name, pattern in (("head", DIGEST), ("file", FILE_ID), ("mac", DIGEST)):
            if not isinstance(value[name], str) or not pattern.fullmatch(value[name]):
                raise ValueError(f"{name} is not {pattern.pattern}")
        return cls(writer=writer, seq=seq, event_id=event_id, head=value["head"],
                   at=parse_time(value["at"], "at"), file=value["file"], mac=value["mac"])


_FIELDS = {"writer", "seq", "event_id", "head", "at", "file", "mac"}


def sign(key: bytes, *, writer: str, seq: int, event_id: int, head: str, at: datetime,
         file: str) -> Checkpoint:
    return Checkpoint(writer=writer, seq=seq, event_id=event_id, head=head, at=at, file=file,
                      mac=_mac(key, writer, seq, event_id, head, at, file))


def _mac(key: bytes, writer: str, seq: int, event_id: int, head: str, at: datetime,
         file: str) -> str:
    return keyed(key, CHECKPOINT_LABEL, writer, seq, event_id, head, timestamp(at), file)


def parse_time(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{name} has no time zone")
    return moment
