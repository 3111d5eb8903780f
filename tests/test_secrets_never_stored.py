"""The suite's secret guard (tests/conftest.py) finds what it is there to find.

Each test leaks a secret on purpose through one path, then takes the finding from the book so
that the guard does not fail the test itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fleet.authority import Authority
from fleet.cli.app import app
from fleet.errors import FleetError
from fleet.tokens import new_token


def test_a_secret_is_found_inside_any_text(secret_book: Any) -> None:
    book = type(secret_book)()
    token = new_token()
    book.add(token.secret, "token")
    book.check("a header", f"Basic user={token}:")
    book.check("a word", "no secret here")
    assert book.take() == ["token in a header"]
    assert book.take() == []


def test_a_secret_made_after_a_mark_may_be_shown_once(secret_book: Any) -> None:
    book = type(secret_book)()
    old, new = new_token(), new_token()
    book.add(old.secret, "old")
    mark = book.mark()
    book.add(new.secret, "new")
    book.check("stdout", f"{old} {new}", before=mark)
    assert book.take() == ["old in stdout"]


def test_short_passphrases_are_not_searched_for(secret_book: Any) -> None:
    book = type(secret_book)()
    book.add("wrong", "a CA passphrase")
    book.add("a passphrase with spaces", "a CA passphrase")
    book.check("an error", "wrong passphrase; use a passphrase with spaces")
    assert book.take() == ["a CA passphrase in an error"]


def test_a_logged_token_secret_is_found(sqlite_authority: Authority, secret_book: Any) -> None:
    sqlite_authority.create_group(name="sensors", actor="test")
    token = sqlite_authority.create_tokens(group="sensors", actor="test")[0].token
    logging.getLogger("fleet.tests").debug("presented %s", token)
    assert secret_book.take() == [
        f"the secret of token {token.token_id} in a log record of fleet.tests"]


def test_an_audited_token_secret_is_found(sqlite_authority: Authority,
                                          secret_book: Any) -> None:
    sqlite_authority.create_group(name="sensors", actor="test")
    token = sqlite_authority.create_tokens(group="sensors", actor="test")[0].token
    sqlite_authority.audit_refusal("enroll", FleetError("refused"), actor=f"est:{token}")
    assert secret_book.take() == [
        f"the secret of token {token.token_id} in an audit row (enroll)"]


def test_a_registry_written_by_another_process_is_checked(
        sqlite_authority: Authority, secret_book: Any) -> None:
    sqlite_authority.create_group(name="sensors", actor="test")
    token = sqlite_authority.create_tokens(group="sensors", actor="test")[0].token
    # a row that leaks it (through the reason), as a bug elsewhere would write it
    sqlite_authority.audit_refusal("enroll", FleetError(f"refused {token}"),
                                   actor="est:127.0.0.1")
    secret_book.take()
    unseen = type(secret_book)()  # a book that did not see the row being written
    unseen.add(token.secret, "token")
    database = sqlite_authority.engine.url.database
    assert database is not None
    unseen.check_registry(Path(database))
    assert unseen.take() == [f"token in an audit row (enroll) of {database}"]


def test_a_cli_run_showing_an_older_secret_is_found(data_dir: Path, secret_book: Any) -> None:
    runner, fleet = CliRunner(), ["--data-dir", str(data_dir)]
    assert runner.invoke(app, [*fleet, "group", "create", "sensors"]).exit_code == 0
    created = runner.invoke(app, [*fleet, "token", "create", "--group", "sensors", "--json"])
    assert created.exit_code == 0, created.output
    assert secret_book.take() == []  # `token create` shows the token it made
    token: str = json.loads(created.stdout)[0]["token"]
    runner.invoke(app, [*fleet, "device", "show", token])  # echoes the id it did not find
    assert secret_book.take() == [
        f"the secret of token {token.partition('.')[0]} in a CLI run's stderr"]
