"""Shared fixtures: a real CA on disk, real SQLite files and a real PostgreSQL server.

Every token secret, CA passphrase and audit checkpoint key the suite makes is remembered;
one that turns up in an audit row, a log record, a CLI run's output or a test's captured
output fails that test (see :class:`SecretBook`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.engine import Engine
from typer.testing import CliRunner, Result

import fleet.ca
import fleet.checkpoints.key
import fleet.tokens
from fleet.authority import Authority
from fleet.ca import CA, ensure_server_certificate, init_ca
from fleet.logs import fields_of
from fleet.registry import AuditEvent, make_engine, migrate, utcnow
from fleet.registry import events as events_db
from fleet.settings import Settings, load_settings

POSTGRES_ENV = "FLEET_TEST_POSTGRES_URL"
TEST_PASSPHRASE = "test-passphrase-not-secret"


def postgres_url() -> str | None:
    """The test server's URL; under CI=true its absence is an error, elsewhere a skip."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(f"{POSTGRES_ENV} is not set: CI must run the PostgreSQL tests (.ci/run)")
    pytest.skip(f"no PostgreSQL: set {POSTGRES_ENV} (see tests/pg.sh) to run this test")


def require_tool(name: str) -> str:
    """Path of a command-line tool the test needs; missing: fail under CI, skip elsewhere."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed: CI must run this test (.ci/run installs it)")
    pytest.skip(f"{name} is not installed")


@pytest.fixture
def tool() -> Callable[[str], str]:
    """``tool("mosquitto")``: require_tool for any test directory (a fixture, because
    ``import conftest`` names whichever conftest module was imported first)."""
    return require_tool


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Any:
    """Under CI=true a skipped test is a failure: CI must exercise everything. A secret
    found while the test ran (see :class:`SecretBook`) fails its teardown."""
    report = yield
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {report.longrepr}"
    if call.when == "teardown":  # after the fixtures' own teardown (a digest's last flush)
        for title, content in report.sections:
            if title.startswith(("Captured stdout", "Captured stderr")):
                SECRETS.check(title.lower(), content)
        if found := SECRETS.take():
            report.outcome = "failed"
            report.longrepr = "secrets stored or shown: " + "; ".join(found)
    return report


def make_settings(data_dir: Path, **env: str) -> Settings:
    environ = {"FLEET_DATA_DIR": str(data_dir), **env}
    return load_settings(environ=environ)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask most systems start processes with (group and others may read), restored
    after the test: what Fleet makes private must not depend on it."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(autouse=True)
def _ca_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CA_PASSPHRASE", TEST_PASSPHRASE)


@pytest.fixture(autouse=True)
def _broker_metrics_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """broker.metrics_port is one fixed port by default: brokers started by tests (and their
    child processes) leave it off, and a test of /metrics asks for a free port (0)."""
    monkeypatch.setenv("FLEET_BROKER_METRICS_PORT", "-1")


@pytest.fixture(scope="session")
def ca_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA (root, issuing, server certificate), audit checkpoint key and empty SQLite
    registry, as `fleet init` makes them, made once per run and copied per test."""
    data_dir = tmp_path_factory.mktemp("ca-template")
    previous = os.environ.get("FLEET_CA_PASSPHRASE")
    os.environ["FLEET_CA_PASSPHRASE"] = TEST_PASSPHRASE
    try:
        settings = make_settings(data_dir)
        ca, _ = init_ca(settings, now=utcnow())
        ensure_server_certificate(settings, ca, now=utcnow())
        fleet.checkpoints.key.ensure_key(settings)
        registry = make_engine(settings.effective_database_url, create=True)
        migrate(registry)
        registry.dispose()
    finally:
        if previous is None:
            del os.environ["FLEET_CA_PASSPHRASE"]
        else:
            os.environ["FLEET_CA_PASSPHRASE"] = previous
    return data_dir


@pytest.fixture
def data_dir(tmp_path: Path, ca_template: Path) -> Path:
    """A data dir with the CA, server certificate and an empty SQLite registry in place."""
    target = tmp_path / "fleet-data"
    shutil.copytree(ca_template, target)
    return target


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return make_settings(data_dir)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    """Each test that asks for it runs on a fresh SQLite file and on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{data_dir / 'fleet.db'}"
        return
    url = postgres_url()
    assert url is not None
    engine = make_engine(url, pool_size=1)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    yield url


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """The URL of a PostgreSQL database of the test's own on the test server, without the
    schema (processes it starts leave the shared one alone); dropped after the test."""
    url = postgres_url()
    assert url is not None
    server = make_url(url)
    name = f"fleet_{secrets.token_hex(6)}"
    admin = make_engine(url, pool_size=1)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=60)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(data_dir: Path) -> Iterator[Engine]:
    """SQLite only, for tests that do not depend on the database backend."""
    engine = make_engine(f"sqlite:///{data_dir / 'fleet.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def ca(settings: Settings) -> CA:
    from fleet.ca import load_ca

    return load_ca(settings)


@pytest.fixture
def authority(settings: Settings, engine: Engine, ca: CA) -> Authority:
    """The authority on both databases."""
    return Authority(settings=settings.with_overrides(database_url=str(engine.url)),
                     engine=engine, ca=ca)


@pytest.fixture
def sqlite_authority(settings: Settings, sqlite_engine: Engine, ca: CA) -> Authority:
    return Authority(settings=settings, engine=sqlite_engine, ca=ca)


# -- secrets never stored, logged or shown ---------------------------------------------------

_SECRET_RUN = re.compile(r"[A-Za-z0-9_-]+")
"""The alphabet of generated secrets (``secrets.token_urlsafe``) and of the test passphrase."""
MIN_SECRET_LENGTH = 12
"""Shorter test passphrases ("wrong") are words any message may hold."""


class SecretBook:
    """The secrets made so far, numbered in order, and where any of them turned up."""

    def __init__(self) -> None:
        self._secrets: dict[str, tuple[int, str]] = {}  # secret -> (number, what it is)
        self._lengths: tuple[int, ...] = ()
        self._odd: tuple[str, ...] = ()  # outside the alphabet: searched for one by one
        self._lock = threading.Lock()
        self._found: list[str] = []
        self.audited: set[str] = set()
        """Digests of the audit rows already checked as they were written."""

    def add(self, secret: str, what: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            if secret in self._secrets:
                return
            self._secrets[secret] = (len(self._secrets), what)
            if _SECRET_RUN.fullmatch(secret):
                self._lengths = tuple(sorted({*self._lengths, len(secret)}))
            else:
                self._odd = (*self._odd, secret)

    def mark(self) -> int:
        """How many secrets exist now (see :meth:`check`)."""
        return len(self._secrets)

    def check(self, where: str, text: str | None, *, before: int | None = None) -> None:
        """Note each known secret in *text*; with *before*, only those made before that mark.

        Every window of a secret's length in each run of the alphabet is looked up, so the
        cost grows with the text, not with the thousands of secrets a run makes.
        """
        if not text:
            return
        windows = (run[i:i + n] for run in _SECRET_RUN.findall(text) for n in self._lengths
                   for i in range(len(run) - n + 1))
        hits = {self._secrets[w] for w in windows if w in self._secrets}
        hits |= {self._secrets[secret] for secret in self._odd if secret in text}
        with self._lock:
            self._found += [f"{what} in {where}" for number, what in sorted(hits)
                            if before is None or number < before]

    def check_registry(self, path: Path) -> None:
        """Check the audit rows of a SQLite registry that were not checked as written."""
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
                rows = connection.execute("SELECT digest, action, actor, device_id, serial, "
                                          "reason, detail FROM audit_events").fetchall()
        except sqlite3.Error:  # not a registry, or one never migrated
            return
        for digest, action, *values in rows:
            if digest not in self.audited:
                self.check(f"an audit row ({action}) of {path}", _audit_text(*values))

    def take(self) -> list[str]:
        """What was found since the last call."""
        with self._lock:
            found, self._found = self._found, []
        return found


SECRETS = SecretBook()


class _SecretLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            SECRETS.check(f"a log record of {record.name}",  # its fields too (fleet.logs)
                          f"{self.format(record)} {fields_of(record)}")
        except Exception:  # a record that cannot be formatted holds nothing to find
            self.handleError(record)


_LOGGERS_AT_DEBUG = ("fleet", "provisioning", "device_sim", "aiohttp")


def _audit_text(*values: object) -> str:
    return " ".join(str(value) for value in values if value is not None)


def _replace_everywhere(patch: pytest.MonkeyPatch, original: Callable[..., Any],
                        replacement: Callable[..., Any]) -> None:
    """Replace a function in its module and in every module that imported it by name."""
    for module in list(sys.modules.values()):
        if getattr(module, "__dict__", {}).get(original.__name__) is original:
            patch.setattr(module, original.__name__, replacement)


@pytest.fixture(scope="session", autouse=True)
def secret_book(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretBook]:
    """Remember every token secret, CA passphrase and audit checkpoint key made or read in
    this process and check every audit row written, every log record (project loggers at
    DEBUG) and every in-process CLI run; at the end, the audit logs of the SQLite registries
    under the session's temporary directory, which the services the tests ran as processes
    wrote too."""
    new_token, read_passphrase = fleet.tokens.new_token, fleet.ca.read_passphrase
    load_key, ensure_key = fleet.checkpoints.key.load_key, fleet.checkpoints.key.ensure_key
    record_audit, invoke = events_db.record_audit, CliRunner.invoke

    def remembered_token() -> fleet.tokens.TokenSecret:
        token = new_token()
        SECRETS.add(token.secret, f"the secret of token {token.token_id}")
        return token

    def remembered_passphrase(settings: Settings, *, create: bool = False) -> tuple[bytes, bool]:
        passphrase, generated = read_passphrase(settings, create=create)
        SECRETS.add(passphrase.decode(errors="replace"), "a CA passphrase")
        return passphrase, generated

    def loaded_key(settings: Settings) -> bytes | None:
        key = load_key(settings)
        if key is not None:
            SECRETS.add(key.hex(), "the audit checkpoint key")
        return key

    def ensured_key(settings: Settings) -> bytes:
        key = ensure_key(settings)
        SECRETS.add(key.hex(), "the audit checkpoint key")
        return key

    def checked_audit(**fields: Any) -> AuditEvent:
        event: AuditEvent = record_audit(**fields)
        SECRETS.audited.add(event.digest or "")
        SECRETS.check(f"an audit row ({event.action})", _audit_text(
            event.actor, event.device_id, event.serial, event.reason, event.detail))
        return event

    def checked_invoke(runner: CliRunner, *args: Any, **kwargs: Any) -> Result:
        # `token create` shows the secrets it makes, once: no other secret may appear.
        made = SECRETS.mark()
        result = invoke(runner, *args, **kwargs)
        SECRETS.check("a CLI run's stdout", result.stdout, before=made)
        SECRETS.check("a CLI run's stderr", result.stderr)
        SECRETS.check("a CLI run's exception", repr(result.exception))
        return result

    handler = _SecretLogHandler(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in _LOGGERS_AT_DEBUG]
    levels = [logger.level for logger in loggers]
    with pytest.MonkeyPatch.context() as patch:
        _replace_everywhere(patch, new_token, remembered_token)
        _replace_everywhere(patch, read_passphrase, remembered_passphrase)
        _replace_everywhere(patch, load_key, loaded_key)
        _replace_everywhere(patch, ensure_key, ensured_key)
        _replace_everywhere(patch, record_audit, checked_audit)
        patch.setattr(CliRunner, "invoke", checked_invoke)
        logging.getLogger().addHandler(handler)
        for logger in loggers:
            logger.setLevel(logging.DEBUG)
        try:
            yield SECRETS
        finally:
            logging.getLogger().removeHandler(handler)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
    for path in tmp_path_factory.getbasetemp().rglob("*.db"):
        SECRETS.check_registry(path)
    if found := SECRETS.take():
        pytest.fail("secrets stored: " + "; ".join(found), pytrace=False)
