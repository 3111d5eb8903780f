"""With --json, every command reports its error as JSON on stderr; without, one plain line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer._click import Command
from typer.core import TyperGroup
from typer.main import get_command

from fleet.cli.app import (
    EXIT_CONFIG,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_USAGE,
    app,
)

from .helpers import Enroll, Run


def commands_with_json() -> list[list[str]]:
    """The path of every command that takes --json, e.g. ["device", "show"]."""
    found: list[list[str]] = []

    def walk(command: Command, path: list[str]) -> None:
        if any("--json" in getattr(p, "opts", ()) for p in command.params):
            found.append(path)  # a group too: `fleet audit --json`
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    walk(get_command(app), [])
    return found


def error_of(stderr: str) -> dict[str, object]:
    [line] = stderr.splitlines()
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


def test_every_command_with_json_is_found() -> None:
    paths = {" ".join(p) for p in commands_with_json()}
    assert {"device show", "device revoke", "device suspend", "device resume", "cert revoke",
            "token create", "audit", "expiring"} <= paths


@pytest.mark.parametrize("path", commands_with_json(), ids=" ".join)
def test_usage_error_of_every_json_command_is_json(fleet: Run, path: list[str]) -> None:
    result = fleet(*path, "--json", "--no-such-option")
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    error = error_of(result.stderr)
    assert error["exit_code"] == EXIT_USAGE
    assert str(error["error"]).startswith((  # or a missing argument, reported first
        "No such option: --no-such-option", "Missing argument"))


def test_not_found_under_json(fleet: Run) -> None:
    result = fleet("device", "show", "ghost", "--json")
    assert result.exit_code == EXIT_NOT_FOUND
    assert error_of(result.stderr) == {"error": "unknown device 'ghost'",
                                       "exit_code": EXIT_NOT_FOUND}


def test_refusal_under_json(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    result = fleet("device", "revoke", "dev-1", "--reason", "keyCompromise", "--json")
    assert result.exit_code == EXIT_REFUSED
    assert result.stdout == ""
    assert error_of(result.stderr) == {"error": "device dev-1 is already revoked",
                                       "exit_code": EXIT_REFUSED}


def test_unknown_group_under_json(fleet: Run) -> None:
    result = fleet("token", "create", "--group", "sensrs", "--json")
    assert result.exit_code == EXIT_NOT_FOUND
    assert error_of(result.stderr) == {
        "error": "unknown group 'sensrs'; no group is declared yet: fleet group create NAME",
        "exit_code": EXIT_NOT_FOUND}


def test_bad_option_value_under_json(fleet: Run) -> None:
    result = fleet("token", "create", "--json", "--group", "sensors", "--ttl", "0s")
    assert result.exit_code == EXIT_USAGE
    error = error_of(result.stderr)
    assert error["exit_code"] == EXIT_USAGE
    assert error["error"] == "Invalid value for '--ttl': '0s': must be greater than zero"


def test_configuration_error_under_json(fleet: Run) -> None:
    result = fleet("device", "list", "--json", env={"FLEET_TOKENS_TTL": "soon"})
    assert result.exit_code == EXIT_CONFIG
    error = error_of(result.stderr)
    assert error["exit_code"] == EXIT_CONFIG
    assert str(error["error"]).startswith("config FLEET_TOKENS_TTL='soon': not a duration")


def test_os_error_under_json(fleet: Run, tmp_path: Path) -> None:
    fleet.ok("group", "create", "sensors")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = fleet("token", "create", "--group", "sensors", "--out",
                   str(not_a_dir / "tokens.csv"), "--json")
    assert result.exit_code == EXIT_REFUSED
    assert result.stdout == ""
    error = error_of(result.stderr)
    assert error["exit_code"] == EXIT_REFUSED
    assert str(not_a_dir) in str(error["error"])


def test_plain_line_without_json(fleet: Run) -> None:
    result = fleet("device", "show", "ghost")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown device 'ghost'\n"
    usage = fleet("device", "show", "ghost", "--no-such-option")
    assert usage.exit_code == EXIT_USAGE
    assert "No such option: --no-such-option" in usage.stderr
    assert not usage.stderr.startswith("{")


def test_json_after_double_dash_is_an_argument(fleet: Run) -> None:
    result = fleet("device", "show", "--", "--json")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown device '--json'\n"
