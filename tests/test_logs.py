"""fleet.logs: the services' log lines as text or JSON, with their fields, at a level."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import pytest

from fleet import logs
from fleet.logs import JsonFormatter, TextFormatter, fields


def record(text: str, *args: object, exc: BaseException | None = None,
           **values: object) -> logging.LogRecord:
    made = logging.getLogger("fleet.test").makeRecord(
        "fleet.test", logging.INFO, __file__, 1, text, args,
        (type(exc), exc, exc.__traceback__) if exc is not None else None,
        extra=fields(**values))
    return made


def test_json_lines_carry_the_fixed_keys_and_the_fields() -> None:
    line = json.loads(JsonFormatter().format(record(
        "connection %s", "admitted", connection_id="a1b2", peer="127.0.0.1:5000",
        identity="device/d1", client_id=None)))
    assert list(line)[:5] == ["time", "level", "logger", "pid", "message"]
    assert line["message"] == "connection admitted"
    assert line["level"] == "INFO"
    assert line["logger"] == "fleet.test"
    assert line["time"].endswith("Z")
    assert line["connection_id"] == "a1b2"
    assert line["identity"] == "device/d1"
    assert "client_id" not in line  # None fields are left out


def test_a_field_cannot_replace_a_fixed_key() -> None:
    line = json.loads(JsonFormatter().format(record("real", message="forged", level="ERROR")))
    assert line["message"] == "real"
    assert line["level"] == "INFO"


def test_json_line_holds_the_traceback_as_one_value() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        text = JsonFormatter().format(record("failed", exc=exc))
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]


def test_text_lines_end_with_the_fields_quoted_when_needed() -> None:
    text = TextFormatter().format(record("connection closed", connection_id="a1b2",
                                         reason="device d1 revoked", status=200))
    assert text.endswith(' connection closed connection_id=a1b2 reason="device d1 revoked" '
                         "status=200")
    assert " INFO fleet.test[" in text


@pytest.fixture
def restored_root() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("restored_root")
def test_configure_filters_by_level_and_replaces_its_own_handler(
        capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(level="info", format="text")
    logs.configure(level="warning", format="json")  # replaces, does not add
    log = logging.getLogger("fleet.test")
    log.info("hidden", extra=fields(n=1))
    log.warning("shown", extra=fields(n=2))
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == "shown"
    assert json.loads(line)["n"] == 2


@pytest.fixture
def restored_libraries() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in logs.QUIET}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restored_root", "restored_libraries")
@pytest.mark.parametrize("library", ["alembic.runtime.migration", "transitions.core",
                                     "amqtt.broker", "aiohttp.access"])
def test_configure_at_info_hides_the_chatter_of_libraries(
        library: str, capsys: pytest.CaptureFixture[str]) -> None:
    for name in logs.QUIET:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logs.configure(level="info", format="text")
    logging.getLogger(library).info("Context impl SQLiteImpl.")
    logging.getLogger("fleet.test").info("shown")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(f"fleet.test[{os.getpid()}]: shown")


@pytest.mark.parametrize(("level", "format"), [("loud", "text"), ("info", "xml")])
def test_configure_refuses_unknown_level_or_format(level: str, format: str) -> None:
    with pytest.raises(ValueError, match="use one of"):
        logs.configure(level=level, format=format)
