"""Shared fixtures: a real CA on disk, real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from fleet.authority import Authority
from fleet.ca import CA, ensure_server_certificate, init_ca
from fleet.registry import make_engine, migrate, utcnow
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Any:
    """Under CI=true a skipped test is a failure: CI must exercise everything."""
    report = yield
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {report.longrepr}"
    return report


def make_settings(data_dir: Path, **env: str) -> Settings:
    environ = {"FLEET_DATA_DIR": str(data_dir), **env}
    return load_settings(environ=environ)


@pytest.fixture(autouse=True)
def _ca_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CA_PASSPHRASE", TEST_PASSPHRASE)


@pytest.fixture(scope="session")
def ca_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA (root, issuing, server certificate) made once per run and copied per test."""
    data_dir = tmp_path_factory.mktemp("ca-template")
    previous = os.environ.get("FLEET_CA_PASSPHRASE")
    os.environ["FLEET_CA_PASSPHRASE"] = TEST_PASSPHRASE
    try:
        settings = make_settings(data_dir)
        ca, _ = init_ca(settings, now=utcnow())
        ensure_server_certificate(settings, ca, now=utcnow())
    finally:
        if previous is None:
            del os.environ["FLEET_CA_PASSPHRASE"]
        else:
            os.environ["FLEET_CA_PASSPHRASE"] = previous
    return data_dir


@pytest.fixture
def data_dir(tmp_path: Path, ca_template: Path) -> Path:
    """A data dir with the CA and server certificate in place (no database yet)."""
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
