"""What every command shares: settings, the registry engine, the authority, the actor."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import typer
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from fleet.authority import Authority
from fleet.ca import ca_exists
from fleet.checkpoints import CheckpointWriter
from fleet.errors import FleetError, NotInitializedError, RegistryUnavailableError
from fleet.registry import has_schema, make_engine, migrate, unavailable_as_error
from fleet.registry import session as new_session
from fleet.settings import Settings, load_settings


class Fleet:
    """Built once per invocation; settings, engine and authority are created on first use."""

    def __init__(self, *, config_file: Path | None, data_dir: Path | None) -> None:
        self._config_file = config_file
        self._data_dir = data_dir

    @cached_property
    def settings(self) -> Settings:
        settings = load_settings(self._config_file)
        return settings.with_overrides(data_dir=(self._data_dir or settings.data_dir).resolve())

    def override(self, **changes: Any) -> Settings:
        """Apply command flags (None means "not given") before the engine is created."""
        if "engine" in self.__dict__:
            raise RuntimeError("settings changed after the registry was opened")
        self.__dict__["settings"] = self.settings.with_overrides(**changes)
        return self.settings

    @cached_property
    def engine(self) -> Engine:
        """The registry engine, with the schema brought up to date, of a data dir that holds
        a CA and a registry: any other is refused (NotInitializedError) and nothing is
        created in it, neither the data dir nor the database."""
        settings = self.settings
        if not ca_exists(settings):
            raise NotInitializedError(
                f"no Fleet CA in {settings.data_dir}: run `fleet init` first, or name the "
                "data dir with --data-dir or FLEET_DATA_DIR")
        database = make_url(settings.effective_database_url)
        if database.get_backend_name() == "sqlite" and database.database \
                and not Path(database.database).exists():
            raise NotInitializedError(f"no registry at {database.database}: run `fleet init` "
                                      "first")
        return self._open(create=False)

    def create_registry(self) -> Engine:
        """For ``fleet init``: the registry engine, the database created if missing."""
        if "engine" not in self.__dict__:
            self.__dict__["engine"] = self._open(create=True)
        return self.engine

    def require_initialized(self) -> Settings:
        """The settings of a data dir that holds a CA and a registry (opened to know, see
        engine): for commands that would write something before they open the registry."""
        self.engine  # noqa: B018
        return self.settings

    def _open(self, *, create: bool) -> Engine:
        settings = self.settings
        engine = make_engine(settings.effective_database_url, create=create, pool_size=2,
                             busy_timeout=settings.database_busy_timeout)
        try:
            if not create and not has_schema(engine):
                shown = make_url(settings.effective_database_url).render_as_string(
                    hide_password=True)
                raise NotInitializedError(f"the registry {shown} holds no Fleet schema: run "
                                          "`fleet init` first")
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return engine

    @cached_property
    def authority(self) -> Authority:
        return Authority(settings=self.settings, engine=self.engine)

    @property
    def actor(self) -> str:
        return f"operator:{login_name()}"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read-only session on the registry."""
        with unavailable_as_error(), new_session(self.engine) as session:
            yield session

    def close(self) -> None:
        """Release the registry; a command that used the authority (and so may have
        appended audit events) first checkpoints the audit chain (fleet.checkpoints)."""
        if self.__dict__.pop("authority", None) is not None:
            self._checkpoint()
        if "engine" in self.__dict__:
            self.engine.dispose()

    def _checkpoint(self) -> None:
        writer = CheckpointWriter(settings=self.settings, engine=self.engine, role="cli")
        try:
            writer.write()
        except RegistryUnavailableError:
            pass  # this command's events are covered by the next checkpoint, of any writer
        except (FleetError, OSError, SQLAlchemyError) as exc:
            typer.echo(f"warning: audit checkpoint not written: {exc}", err=True)


def login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry, e.g. an arbitrary uid in a container
        return f"uid{os.getuid()}"


def fleet_of(ctx: typer.Context) -> Fleet:
    """The Fleet object the root callback put on the context."""
    obj = ctx.find_root().obj
    if not isinstance(obj, Fleet):
        raise RuntimeError("fleet CLI context is missing")
    return obj
