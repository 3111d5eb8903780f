"""Keyed checkpoints of the audit chain's head, kept outside the rows they vouch for.

A checkpoint records, under an HMAC-SHA256 key the registry never holds (see
:mod:`fleet.checkpoints.key`), the id and digest of the newest audit event, when and by
which process it was taken. Each one goes to the ``audit_checkpoints`` table and to the
append-only file in the data dir (:mod:`fleet.checkpoints.journal`). With them
``fleet audit verify`` (:mod:`fleet.checkpoints.verify`) notices what the hash chain alone
cannot: the newest events deleted, or a log edited and re-chained with Fleet's own digest.

HMAC rather than a signature: every party that writes checkpoints also verifies them, on
hosts that hold the CA keys anyway; a public verification key would buy nothing here and
cost a second key format to keep. What the checkpoints guarantee, and what they cannot, is
in docs/audit.md.
"""

from fleet.checkpoints.journal import journal_path
from fleet.checkpoints.key import ensure_key, key_path, load_key
from fleet.checkpoints.record import Checkpoint
from fleet.checkpoints.verify import Finding, Report, verify
from fleet.checkpoints.writer import CheckpointWriter, periodic

__all__ = [
    "Checkpoint", "CheckpointWriter", "Finding", "Report", "ensure_key", "journal_path",
    "key_path", "load_key", "periodic", "verify",
]
