from __future__ import annotations

import csv
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.authority import Authority, IssuedToken
from fleet.cli import token as token_cli
from fleet.cli.app import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE
from fleet.errors import RegistryUnavailableError
from fleet.tokens import parse_token

from .helpers import Enroll, Run

GROUPS = ("sensors", "line-3", "bulk", "g", "g1", "g2", "a", "b")


@pytest.fixture(autouse=True)
def _groups(declare: Callable[..., None]) -> None:
    """The groups these tests mint tokens for are declared."""
    declare(*GROUPS)


CREATED_KEYS = {"id", "token", "group", "device_id", "uses", "expires_at"}
LISTED_KEYS = {"id", "group", "device_id", "uses", "max_uses", "expires_at", "expired",
               "revoked", "revoked_at", "created_at", "created_by"}


def test_token_create_json(fleet: Run) -> None:
    created = fleet.json("token", "create", "--group", "sensors")
    assert isinstance(created, list)
    assert len(created) == 1
    token = created[0]
    assert set(token) == CREATED_KEYS
    assert parse_token(token["token"]).token_id == token["id"]
    assert token["group"] == "sensors"
    assert token["device_id"] is None
    assert token["uses"] == 1
    assert token["expires_at"].endswith("Z")


def test_token_create_count_uses_ttl_device(fleet: Run) -> None:
    many = fleet.json("token", "create", "--group", "line-3", "--count", "3", "--uses", "5",
                      "--ttl", "15m")
    assert len({t["id"] for t in many}) == 3
    assert {t["uses"] for t in many} == {5}
    bound = fleet.json("token", "create", "--group", "line-3", "--device", "dev-42")
    assert bound[0]["device_id"] == "dev-42"
    device = fleet.json("device", "show", "dev-42")
    assert device["status"] == "pending"


def test_token_create_in_batches(fleet: Run) -> None:
    created = fleet.json("token", "create", "--group", "bulk", "--count", "1001")
    assert len({t["id"] for t in created}) == 1001
    assert len(fleet.json("token", "list", "--group", "bulk")) == 1001


def test_token_create_csv_out_is_private(fleet: Run, tmp_path: Path) -> None:
    out = tmp_path / "tokens.csv"
    result = fleet.ok("token", "create", "--group", "sensors", "--count", "2", "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["id", "token", "group", "device_id", "uses", "expires_at"]
    assert len(rows) == 2
    for row in rows:
        assert row["token"] not in result.stdout  # secrets go to the file only
        assert parse_token(row["token"]).token_id == row["id"]
    assert f"to {out} (mode 0600)" in result.stdout


def test_token_create_table_shows_secrets_once(fleet: Run) -> None:
    out = fleet.ok("token", "create", "--group", "sensors").stdout
    listed = fleet.json("token", "list")
    assert listed[0]["id"] in out
    assert "." in out.split(listed[0]["id"], 1)[1]  # the id.secret form follows the id
    assert "token" not in listed[0]


def test_token_create_refused_bad_ttl(fleet: Run) -> None:
    result = fleet("token", "create", "--group", "sensors", "--ttl", "soon")
    assert result.exit_code == EXIT_USAGE
    assert "Invalid value for '--ttl'" in result.stderr
    assert "not a duration" in result.stderr
    assert fleet.json("token", "list") == []


@pytest.mark.parametrize("ttl", ["0s", "0", "0ms", "0d"])
def test_token_create_refused_zero_ttl_says_it_must_be_positive(fleet: Run, ttl: str) -> None:
    result = fleet("token", "create", "--group", "sensors", "--ttl", ttl)
    assert result.exit_code == EXIT_USAGE
    assert f"Invalid value for '--ttl': {ttl!r}: must be greater than zero" in result.stderr
    assert "not a duration" not in result.stderr
    assert fleet.json("token", "list") == []


def test_token_create_refused_zero_count(fleet: Run) -> None:
    result = fleet("token", "create", "--group", "sensors", "--count", "0")
    assert result.exit_code == EXIT_USAGE


def test_token_create_refused_invalid_group(fleet: Run) -> None:
    result = fleet("token", "create", "--group", "no/slashes")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: invalid ")
    assert "'no/slashes'" in result.stderr


def test_token_create_refused_device_bound_count(fleet: Run) -> None:
    result = fleet("token", "create", "--group", "g", "--device", "d1", "--count", "2")
    assert result.exit_code == EXIT_REFUSED
    assert "one at a time" in result.stderr
    assert fleet.json("token", "list") == []


def test_token_create_refused_device_in_other_group(fleet: Run) -> None:
    fleet.ok("token", "create", "--group", "g1", "--device", "d1")
    result = fleet("token", "create", "--group", "g2", "--device", "d1")
    assert result.exit_code == EXIT_REFUSED
    assert "is in group 'g1'" in result.stderr


def test_token_create_refused_missing_group(fleet: Run) -> None:
    result = fleet("token", "create")
    assert result.exit_code == EXIT_USAGE
    assert "--group" in result.stderr


def test_token_list_json_includes_used_expired_and_revoked(fleet: Run, enroll: Enroll) -> None:
    expired = fleet.json("token", "create", "--group", "sensors", "--ttl", "1ms")[0]
    revoked = fleet.json("token", "create", "--group", "sensors")[0]
    fleet.ok("token", "revoke", revoked["id"])
    enroll("dev-1")  # creates and uses up one token of its own
    time.sleep(0.01)
    listed = {t["id"]: t for t in fleet.json("token", "list")}
    assert len(listed) == 3
    for token in listed.values():
        assert set(token) == LISTED_KEYS
    assert listed[expired["id"]]["expired"] is True
    assert listed[revoked["id"]]["revoked"] is True
    assert listed[revoked["id"]]["revoked_at"] is not None
    used = next(t for t in listed.values() if t["created_by"] == "factory")
    assert used["uses"] == 0
    assert used["max_uses"] == 1
    assert used["expired"] is False
    table = fleet.ok("token", "list").stdout
    for state in ("expired", "revoked", "used"):
        assert state in table


def test_token_list_filters(fleet: Run) -> None:
    fleet.ok("token", "create", "--group", "a", "--count", "2")
    fleet.ok("token", "create", "--group", "b", "--device", "dev-b")
    assert len(fleet.json("token", "list", "--group", "a")) == 2
    by_device = fleet.json("token", "list", "--device", "dev-b")
    assert [t["group"] for t in by_device] == ["b"]


def test_token_created_by_operator(fleet: Run) -> None:
    fleet.ok("token", "create", "--group", "a")
    assert fleet.json("token", "list")[0]["created_by"].startswith("operator:")


def test_token_revoke(fleet: Run) -> None:
    token = fleet.json("token", "create", "--group", "a")[0]
    result = fleet.ok("token", "revoke", token["id"])
    assert f"revoked token {token['id']}" in result.stdout


def test_token_revoke_refused_unknown_token(fleet: Run) -> None:
    result = fleet("token", "revoke", "0123456789abcdef")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown token '0123456789abcdef'\n"


def test_token_revoke_refused_already_revoked(fleet: Run) -> None:
    token = fleet.json("token", "create", "--group", "a")[0]
    fleet.ok("token", "revoke", token["id"])
    result = fleet("token", "revoke", token["id"])
    assert result.exit_code == EXIT_REFUSED
    assert "already revoked" in result.stderr


def test_token_revoke_given_whole_token_never_echoes_the_secret(fleet: Run) -> None:
    secret = "0123456789abcdef.abcdefghijklmnopqrstuvwxyz012345"
    result = fleet("token", "revoke", secret)
    assert result.exit_code == EXIT_NOT_FOUND
    assert "abcdefghijklmnop" not in result.stdout + result.stderr
    audit = fleet.json("audit", "--action", "token.revoke")
    assert "abcdefghijklmnop" not in str(audit)


def test_token_create_outage_midway_still_hands_out_created_secrets(
        fleet: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: the registry goes away after the first batch has committed.
    monkeypatch.setattr(token_cli, "BATCH", 2)
    real = Authority.create_tokens
    calls = []

    def flaky(self: Authority, **kwargs: Any) -> list[IssuedToken]:
        calls.append(kwargs["count"])
        if len(calls) > 1:
            raise RegistryUnavailableError("registry database unavailable: injected")
        return real(self, **kwargs)

    monkeypatch.setattr(Authority, "create_tokens", flaky)
    out = tmp_path / "tokens.csv"
    result = fleet("token", "create", "--group", "g", "--count", "5", "--out", str(out))
    assert result.exit_code == EXIT_UNAVAILABLE
    assert "created 2 of 5 tokens before an error" in result.stderr
    assert result.stderr.strip().endswith("error: registry database unavailable: injected")
    assert len(list(csv.DictReader(out.open()))) == 2
