"""Verifying the audit log against its keyed checkpoints (``fleet audit verify``).

The hash chain alone shows a row that was edited, removed or inserted in place; it cannot
show that the newest events were deleted, or that someone changed a row and recomputed
every digest after it. A checkpoint can: it holds, keyed, the head an event had when it was
written. Every checkpoint is read from the registry and from the data dir's file and must
be in both, authentic, numbered without gaps per writer, and agree with the log.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

from fleet.checkpoints import journal
from fleet.checkpoints.key import key_path, load_key
from fleet.checkpoints.record import Checkpoint, timestamp
from fleet.registry import checkpoints as checkpoints_db
from fleet.registry.events import ChainCheck, verify_audit_chain
from fleet.settings import Settings

CHAIN = "chain"  # an event does not match the hash chain
TRUNCATED = "truncated"  # a checkpoint names an event past the end of the log
RECHAINED = "rechained"  # a checkpoint's head is not what the log holds at its position
CHECKPOINT_MAC = "checkpoint-mac"  # a checkpoint (registry or file) fails its MAC
ROW_MISSING = "checkpoint-row-missing"  # in the file, not in the registry
LINE_MISSING = "checkpoint-line-missing"  # in the registry, not in the file it was written to
CHECKPOINT_GAP = "checkpoint-gap"  # a writer's numbers skip: missing from both places
CHECKPOINT_ORDER = "checkpoint-order"  # a writer's positions went backwards
FILE_MISSING = "file-missing"  # the registry holds checkpoints, the data dir has no file
FILE_HEADER = "file-header"  # the file's header fails its MAC
FILE_LINE = "file-line"  # a line of the file is neither header nor checkpoint
NO_KEY = "no-key"  # the key file is absent: the checkpoints cannot be checked


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong; *position* is the first audit event it puts in doubt, if any."""

    kind: str
    message: str
    position: int | None = None

    def line(self) -> str:
        return self.message if self.position is None else f"event {self.position}: {self.message}"


@dataclass(slots=True)
class Report:
    events: int
    """Events that match the hash chain, up to the first that does not."""
    last_event: int
    """The id of the newest event (0: none)."""
    anchors_checked: bool
    checkpoints: int = 0
    """Distinct checkpoints read from the registry and the file."""
    anchored_to: int = 0
    """The newest event a checkpoint confirms (0: none)."""
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_bad(self) -> int | None:
        return min((f.position for f in self.findings if f.position is not None), default=None)

    def ordered(self) -> list[Finding]:
        """Findings by the position they name; those naming none last."""
        return sorted(self.findings, key=lambda f: (f.position is None, f.position or 0))

    def as_json(self) -> dict[str, Any]:
        ordered = self.ordered()
        return {
            "ok": self.ok, "events": self.events, "last_event": self.last_event,
            "anchors_checked": self.anchors_checked, "checkpoints": self.checkpoints,
            "anchored_to": self.anchored_to, "first_bad_position": self.first_bad,
            "problem": ordered[0].message if ordered else None,
            "findings": [{"kind": f.kind, "position": f.position, "message": f.message}
                         for f in ordered],
            "notes": self.notes,
        }


def verify(*, settings: Settings, session: Session, chain_only: bool = False) -> Report:
    """Check the hash chain and, unless *chain_only*, every checkpoint in both places."""
    key = None if chain_only else load_key(settings)
    if key is None:
        chain = verify_audit_chain(session=session)
        report = Report(events=chain.events, last_event=chain.last_id, anchors_checked=False)
        _chain(report, chain)
        if not chain_only:
            report.findings.append(Finding(NO_KEY, (
                f"no audit checkpoint key at {key_path(settings)}: only the hash chain was "
                "checked, not its anchors, so deleted newest events or a re-chained log would "
                "go unnoticed (--chain-only accepts that)")))
        return report
    path = journal.journal_path(settings)
    with journal.reading(path) as handle:  # no checkpoint is written while both are read
        rows = [Checkpoint.of_row(row) for row in checkpoints_db.list_checkpoints(
            session=session)]
        contents = journal.parse(handle.read()) if handle is not None else None
    check = _Checkpoints(key, key_path(settings), path, rows, contents)
    chain = verify_audit_chain(session=session,
                               positions={c.event_id for c in check.authentic.values()})
    report = Report(events=chain.events, last_event=chain.last_id, anchors_checked=True,
                    checkpoints=len(check.names), findings=check.findings, notes=check.notes)
    _chain(report, chain)
    _anchors(report, check.authentic.values(), chain)
    return report


def _chain(report: Report, chain: ChainCheck) -> None:
    if chain.problem is not None:
        report.findings.append(Finding(CHAIN, chain.problem, chain.first_bad))


class _Checkpoints:
    """The checkpoints of both places: what is wrong with them, and those that are authentic."""

    def __init__(self, key: bytes, key_file: Path, path: Path, rows: list[Checkpoint],
                 contents: journal.Contents | None) -> None:
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self.authentic: dict[tuple[str, int], Checkpoint] = {}
        lines = contents.checkpoints if contents is not None else []
        self.names = {c.key for c in rows} | {c.key for _, c in lines}
        for checkpoint in rows:
            self._authenticate(key, checkpoint, "in the registry")
        for number, checkpoint in lines:
            self._authenticate(key, checkpoint, f"on line {number} of {path}")
        if self.names and not self.authentic:
            self.notes.append(f"no checkpoint verifies with the key {key_file}: is it the key "
                              "that wrote them?")
        file = self._file(key, path, rows, contents)
        self._presence(path, rows, lines, file)
        self._writers()

    def _authenticate(self, key: bytes, checkpoint: Checkpoint, where: str) -> None:
        if checkpoint.authentic(key):
            self.authentic[checkpoint.key] = checkpoint
            return
        self.findings.append(Finding(CHECKPOINT_MAC, (
            f"checkpoint {checkpoint.name} {where} fails its MAC: it was altered or forged"),
            checkpoint.event_id))

    def _file(self, key: bytes, path: Path, rows: list[Checkpoint],
              contents: journal.Contents | None) -> str | None:
        """The id of this data dir's file (None: unknown), noting what is wrong with it."""
        if contents is None:
            if rows:
                self.findings.append(Finding(FILE_MISSING, (
                    f"the checkpoint file {path} is missing while the registry holds "
                    f"{len(rows)} checkpoints: it was deleted, or this data dir never wrote "
                    "one (verify where the services run)")))
            return None
        for number, problem in contents.problems:
            self.findings.append(Finding(FILE_LINE, f"line {number} of {path} is {problem}"))
        header = contents.header
        if header is None and not contents.checkpoints and not contents.problems:
            self.findings.append(Finding(FILE_HEADER, (
                f"the checkpoint file {path} is empty: its header and every line were deleted")))
        if header is not None and header.authentic(key):
            return header.file
        if header is not None:
            self.findings.append(Finding(FILE_HEADER, (
                f"the header of {path} fails its MAC: the file was replaced or altered")))
        return next((c.file for _, c in contents.checkpoints
                     if self.authentic.get(c.key) == c), None)

    def _presence(self, path: Path, rows: list[Checkpoint],
                  lines: list[tuple[int, Checkpoint]], file: str | None) -> None:
        in_rows = {c.key for c in rows}
        in_lines = {c.key for _, c in lines}
        for number, checkpoint in lines:
            if checkpoint.key not in in_rows:
                self.findings.append(Finding(ROW_MISSING, (
                    f"checkpoint {_described(checkpoint)} is on line {number} of {path} but "
                    "not in the registry: its row was deleted"), checkpoint.event_id))
        elsewhere = 0
        for checkpoint in rows:
            if checkpoint.key in in_lines:
                continue
            if file is not None and checkpoint.file == file:
                self.findings.append(Finding(LINE_MISSING, (
                    f"checkpoint {_described(checkpoint)} is in the registry but not in "
                    f"{path}: its line was deleted"), checkpoint.event_id))
            elif file is not None:
                elsewhere += 1
        if elsewhere:
            self.notes.append(f"{elsewhere} checkpoints went to another data dir's checkpoint "
                              "file: they are checked against the registry alone")

    def _writers(self) -> None:
        numbers: dict[str, set[int]] = defaultdict(set)
        for writer, seq in self.names:
            numbers[writer].add(seq)
        for writer, seqs in sorted(numbers.items()):
            missing = sorted(set(range(1, max(seqs) + 1)) - seqs)
            if missing:
                self.findings.append(Finding(CHECKPOINT_GAP, (
                    f"checkpoints {_numbers(missing)} of writer {writer} are missing from "
                    f"both the registry and the file (it wrote #{max(seqs)}): deleted")))
        previous: dict[str, Checkpoint] = {}
        for checkpoint in sorted(self.authentic.values(), key=lambda c: c.key):
            before = previous.get(checkpoint.writer)
            if before is not None and checkpoint.event_id < before.event_id:
                self.findings.append(Finding(CHECKPOINT_ORDER, (
                    f"checkpoint {_described(checkpoint)} names an earlier event than "
                    f"{_described(before)} of the same writer: the log was cut back while it "
                    "ran"), checkpoint.event_id + 1))
            previous[checkpoint.writer] = checkpoint


def _anchors(report: Report, authentic: Iterable[Checkpoint], chain: ChainCheck) -> None:
    """Compare each authentic checkpoint with what the log holds at its position."""
    beyond: list[Checkpoint] = []
    disagree: list[Checkpoint] = []
    confirmed: list[int] = []
    for checkpoint in authentic:
        if checkpoint.event_id > chain.last_id:
            beyond.append(checkpoint)
        elif chain.digests.get(checkpoint.event_id) != checkpoint.head:
            disagree.append(checkpoint)
        else:
            confirmed.append(checkpoint.event_id)
    if beyond:
        last = max(beyond, key=lambda c: c.event_id)
        ends = f"the log ends at event {chain.last_id}" if chain.last_id else "the log is empty"
        report.findings.append(Finding(TRUNCATED, (
            f"the newest events were deleted: checkpoint {_described(last)} names event "
            f"{last.event_id}, but {ends} ({_count(beyond)} past its end)"),
            chain.last_id + 1))
    if disagree:
        first = min(disagree, key=lambda c: c.event_id)
        good = max((p for p in confirmed if p < first.event_id), default=0)
        stored = chain.digests.get(first.event_id)
        there = (f"the log's digest there is {stored[:16]}..." if stored is not None
                 else "that event is missing")
        report.findings.append(Finding(RECHAINED, (
            f"the log was changed after event {good} and up to event {first.event_id}: "
            f"checkpoint {_described(first)} holds head {first.head[:16]}..., {there} "
            f"(re-chained, or events removed, replaced or inserted; {_count(disagree)} "
            "disagree)"), good + 1))
    report.anchored_to = max(confirmed, default=0)
    if report.anchored_to < chain.last_id:
        report.notes.append(
            f"events after {report.anchored_to} (up to {chain.last_id}) are newer than the "
            "newest checkpoint that confirms them: not anchored yet")


def _described(checkpoint: Checkpoint) -> str:
    return f"{checkpoint.name} (event {checkpoint.event_id}, {timestamp(checkpoint.at)})"


def _count(checkpoints: list[Checkpoint]) -> str:
    return "1 checkpoint" if len(checkpoints) == 1 else f"{len(checkpoints)} checkpoints"


def _numbers(values: list[int]) -> str:
    """``#3, #5-#7``: runs of consecutive numbers."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(f"#{r[0]}" if len(r) == 1 else f"#{r[0]}-#{r[-1]}" for r in runs)
