"""The services' log lines: one handler on stderr, as text or as JSON lines.

``log.level`` and ``log.format`` (FLEET_LOG_LEVEL, FLEET_LOG_FORMAT, ``--log-level`` and
``--log-format`` on ``fleet up`` and ``fleet serve``) choose what is written and how. A line
about an outcome (a connection admitted, refused or closed; an EST request answered) carries
its facts as fields, ``log.info("...", extra=fields(peer=..., status=...))``: text lines end
with them as ``key=value``, JSON lines hold them as keys beside the fixed ones:

    {"time": "2026-12-01T14:13:30.123Z", "level": "INFO", "logger": "fleet.broker.gate",
     "pid": 4242, "message": "connection admitted", "connection_id": "...", ...}

Fields never hold a secret: a token is named by its id, a device by its identity.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
FIELDS = "fleet_fields"
"""The LogRecord attribute holding a line's fields."""
QUIET = {"aiohttp.access": logging.WARNING, "amqtt": logging.ERROR,
         "alembic": logging.WARNING, "transitions": logging.WARNING}
"""Libraries whose chatter (per connection, per migration step, per state change of amqtt's
broker) says nothing Fleet's own lines do not."""


def fields(**values: Any) -> dict[str, Any]:
    """The ``extra`` of a log call whose line carries *values* (None values are left out)."""
    return {FIELDS: {k: v for k, v in values.items() if v is not None}}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    values: dict[str, Any] = getattr(record, FIELDS, {})
    return values


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER[PID]: MESSAGE key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        values = fields_of(record)
        if not values:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        pairs = " ".join(f"{k}={_text(v)}" for k, v in values.items())
        return f"{head} {pairs}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, the fields, and the
    exception's traceback as ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _text(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or any(
        c.isspace() or c in '"=' for c in text) else text


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (and replaces when called again): it writes to
    whatever ``sys.stderr`` is when a line is written."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure(*, level: str, format: str) -> None:
    """Send the root logger's records at *level* and above to stderr in *format*."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    if format not in FORMATS:
        raise ValueError(f"log format {format!r}: use one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler()
    handler.setLevel(level.upper())  # also below a logger given a level of its own
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet in QUIET.items():
        library = logging.getLogger(name)
        if library.level == logging.NOTSET:
            library.setLevel(max(quiet, root.level))
