"""Every command but the four that set a data dir up refuses one without a CA and a registry:
one line naming the data dir and `fleet init`, exit code 1, and nothing created, neither the
data dir, nor a registry, nor an output file.

The commands are read from the CLI itself, so a new one is covered as soon as it exists;
required arguments are filled in from their types (see ``_arguments``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from typer._click.core import Command
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from fleet.cli.app import EXIT_REFUSED, app
from fleet.registry import make_engine, migrate
from fleet.settings import load_settings

from .helpers import Run

SETS_UP = {"init", "up", "restore", "ca import"}
"""Commands that make or fill a data dir (``--help`` and ``--version`` aside)."""

EXTRA: dict[str, tuple[str, ...]] = {
    "cert revoke": ("--reason", "keyCompromise"),
    "device revoke": ("--reason", "keyCompromise"),
    "device suspend": ("--reason", "maintenance"),
    "diagnose": ("{inputs}/cert.pem",),
}
"""Arguments a command checks before it opens the registry (absent, a usage error)."""

VALUES = {"serial": "01", "api_key_file": "{inputs}/api-key",
          "credentials_file": "{inputs}/api-key"}
"""Values for required parameters a placeholder would not satisfy; files to read are in
``{inputs}`` (see the fixture)."""


def _leaves(group: TyperGroup, prefix: str = "") -> Iterator[tuple[str, Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, TyperGroup):
            yield from _leaves(command, f"{path} ")
        else:
            yield path, command


ROOT = typer.main.get_command(app)
assert isinstance(ROOT, TyperGroup)
COMMANDS = dict(_leaves(ROOT))
CHECKED = sorted(set(COMMANDS) - SETS_UP)


def _arguments(name: str, *, inputs: Path, outputs: Path) -> list[str]:
    """Every required parameter of command *name* given (files to read from *inputs*, paths
    to write inside *outputs*, where nothing may appear), then its EXTRA."""
    args = name.split()
    for param in COMMANDS[name].params:
        if not param.required:
            continue
        kind = param.type_descriptor.annotation
        exists = getattr(param.type_descriptor.parameter_info, "exists", False)
        if param.name in VALUES:
            value = VALUES[param.name]
        elif kind is Path:
            value = str(inputs / "cert.pem" if exists else outputs / str(param.name))
        elif kind is int:
            value = "1"
        else:
            value = "x"
        args += [param.opts[0], value] if isinstance(param, TyperOption) else [value]
    return [a.format(inputs=inputs) for a in [*args, *EXTRA.get(name, ())]]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def inputs(tmp_path: Path, data_dir: Path) -> Path:
    """Files commands may read, outside the watched directory: a certificate and an API key."""
    directory = tmp_path / "inputs"
    directory.mkdir()
    shutil.copy(data_dir / "server" / "cert.pem", directory / "cert.pem")
    (directory / "api-key").write_text("key:secret\n")
    return directory


def _no_ca(target: Path, template: Path) -> None:
    """A registry and no CA: where `--data-dir NEW_DIR token create` used to mint tokens."""
    target.mkdir()
    settings = load_settings(environ={"FLEET_DATA_DIR": str(target)})
    engine = make_engine(settings.effective_database_url, create=True)
    migrate(engine)
    engine.dispose()


def _no_registry(target: Path, template: Path) -> None:
    shutil.copytree(template, target)
    (target / "fleet.db").unlink()


STATES = {
    "missing": lambda target, template: None,
    "empty": lambda target, template: target.mkdir(),
    "registry-without-ca": _no_ca,
    "ca-without-registry": _no_registry,
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", CHECKED)
def test_command_refuses_a_data_dir_fleet_init_has_not_set_up(
        name: str, state: str, tmp_path: Path, data_dir: Path, inputs: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    watched = tmp_path / "watched"
    (watched / "out").mkdir(parents=True)  # output paths have their directory: not the refusal
    target = watched / "data"
    STATES[state](target, data_dir)
    monkeypatch.chdir(watched)  # relative defaults (./fleet-data, report files) land here too
    before = _tree(watched)
    args = _arguments(name, inputs=inputs, outputs=watched / "out")
    result = Run(target, CliRunner())(*args)
    assert result.exit_code == EXIT_REFUSED, (args, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(target.resolve()) in result.stderr
    assert "run `fleet init` first" in result.stderr
    assert _tree(watched) == before


def test_every_command_is_checked_or_sets_a_data_dir_up() -> None:
    """A rename must not drop a command from either list."""
    assert set(COMMANDS) >= SETS_UP
    assert set(EXTRA) <= set(CHECKED)


@pytest.mark.parametrize("args", [("device", "list"), ("token", "list"), ("health",)],
                         ids=" ".join)
def test_command_in_another_directory_creates_no_fleet_data_there(
        args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --data-dir, a command run away from the data dir (./fleet-data) used to say
    "no devices" and leave an empty registry behind."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, list(args), env={"FLEET_DATA_DIR": None})
    assert result.exit_code == EXIT_REFUSED
    assert f"no Fleet CA in {tmp_path.resolve() / 'fleet-data'}: run `fleet init` first" \
        in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("--help",), ("device", "list", "--help"), ("--version",)],
                         ids=" ".join)
def test_help_and_version_need_no_data_dir(args: tuple[str, ...], empty_fleet: Run) -> None:
    assert empty_fleet.ok(*args).stdout
    assert not empty_fleet.data_dir.exists()


def test_command_refuses_a_registry_without_the_schema(fleet: Run, database_url: str) -> None:
    """A registry that exists but was never set up: an empty SQLite file, a PostgreSQL
    database without Fleet's tables."""
    if database_url.startswith("sqlite"):
        (fleet.data_dir / "fleet.db").write_bytes(b"")
    env = {"FLEET_DATABASE_URL": database_url}
    result = fleet("device", "list", env=env)
    assert result.exit_code == EXIT_REFUSED
    assert "holds no Fleet schema: run `fleet init` first" in result.stderr
    fleet.ok("init", env=env)
    assert fleet.json("device", "list", env=env) == []
