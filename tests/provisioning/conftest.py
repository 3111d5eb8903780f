"""Fixtures: a real EST service on 127.0.0.1 (TLS, fleet CA, SQLite or PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from est_support import Est, ServerThread
from sqlalchemy.engine import Engine

from fleet.authority import Authority
from fleet.ca import CA
from fleet.errors import RegistryUnavailableError
from fleet.registry import make_engine, migrate
from fleet.settings import load_settings

EstFactory = Callable[..., Est]


@pytest.fixture
def make_est(data_dir: Path, ca: CA, tmp_path: Path) -> Iterator[EstFactory]:
    """Start EST services: ``make_est(database_url=None, **FLEET_* variables)``."""
    running: list[tuple[ServerThread, Engine]] = []

    def factory(database_url: str | None = None, **env: str) -> Est:
        url = database_url or f"sqlite:///{data_dir / 'fleet.db'}"
        environ = {"FLEET_DATABASE_URL": url, "FLEET_EST_METRICS_PORT": "0", **env}
        settings = load_settings(environ={"FLEET_DATA_DIR": str(data_dir), **environ})
        engine = make_engine(url, pool_size=5)
        with contextlib.suppress(RegistryUnavailableError):  # a service without its database
            migrate(engine)
        thread = ServerThread(settings)
        running.append((thread, engine))
        authority = Authority(settings=settings, engine=engine, ca=ca)
        return Est(settings=settings, authority=authority, port=thread.server.port,
                   metrics_port=thread.server.metrics_port, tmp=tmp_path, engine=engine)

    yield factory
    for thread, engine in running:
        thread.stop()
        engine.dispose()


@pytest.fixture
def est(make_est: EstFactory) -> Est:
    """The service on SQLite."""
    return make_est()


@pytest.fixture
def est_any_db(make_est: EstFactory, database_url: str) -> Est:
    """The service on SQLite and on PostgreSQL."""
    return make_est(database_url)
