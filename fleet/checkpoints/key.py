"""The checkpoint key: 32 random bytes in a file the registry never holds (0600).

Its default place is ``<data_dir>/ca/audit.key``, next to the CA keys, because whoever may
sign certificates may vouch for the audit log; ``audit.checkpoint_key_file`` puts it
elsewhere (a mount the database host cannot read, say). ``fleet init`` creates it; a data dir
made before checkpoints existed gets it the first time a checkpoint is written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from fleet.errors import CAError
from fleet.files import private_dir
from fleet.settings import Settings

KEY_NAME = "audit.key"
KEY_BYTES = 32


def key_path(settings: Settings) -> Path:
    configured = settings.audit_checkpoint_key_file
    return configured if str(configured) not in ("", ".") else settings.ca_dir / KEY_NAME


def load_key(settings: Settings) -> bytes | None:
    """The key, or None when its file does not exist."""
    try:
        return _read(key_path(settings))
    except FileNotFoundError:
        return None


def ensure_key(settings: Settings) -> bytes:
    """The key, created (0600) if it does not exist yet; safe against concurrent creators."""
    key = load_key(settings)
    if key is not None:
        return key
    path = key_path(settings)
    create_private(path, secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n")
    return _read(path)


def create_private(path: Path, data: bytes) -> None:
    """Create *path* holding *data* (0600, a missing directory 0700) unless it exists; of
    concurrent creators the first wins. The file is made complete aside and then linked in
    place, so no reader ever sees it empty or half written."""
    private_dir(path.parent)
    # mkstemp makes the file 0600 whatever the umask.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _read(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise CAError(f"cannot read the audit checkpoint key {path}: "
                      f"{getattr(exc, 'strerror', None) or exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        # Never quote the content: it may be the key, or most of it.
        raise CAError(f"the audit checkpoint key {path} is not {2 * KEY_BYTES} hex digits")
    return key
