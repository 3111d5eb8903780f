"""What a wheel needs besides its modules: the default configuration inside the package, found
with importlib.resources, one copy of it, and ``fleet --version``. Building, installing and
running the wheel outside the checkout is .ci/wheel-smoke."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fleet
from fleet.cli.app import app
from fleet.settings import DEFAULT_CONFIG, load_settings

PROJECT = Path(__file__).resolve().parents[1]
PACKAGED = Path(str(resources.files("fleet").joinpath("config")))


def test_default_config_is_the_one_inside_the_package() -> None:
    assert DEFAULT_CONFIG == PACKAGED / "fleet.toml"
    assert DEFAULT_CONFIG.is_relative_to(Path(fleet.__file__).parent)
    settings = load_settings(environ={})
    assert settings.config_file == DEFAULT_CONFIG
    assert settings.acl_file == PACKAGED / "acl.toml"
    assert settings.acl_file.is_file()


@pytest.mark.parametrize("name", ["fleet.toml", "acl.toml"])
def test_config_in_the_repository_is_a_link_to_the_packaged_file(name: str) -> None:
    """config/ is what the docs point operators at: a link, so it cannot drift from the copy
    the wheel ships."""
    documented = PROJECT / "config" / name
    assert documented.is_symlink()
    assert documented.resolve() == (PACKAGED / name).resolve()
    assert sorted(p.name for p in (PROJECT / "config").iterdir()) == ["acl.toml", "fleet.toml"]
    assert sorted(p.name for p in PACKAGED.iterdir()) == ["acl.toml", "fleet.toml"]


def test_relative_acl_file_is_relative_to_the_config_file_that_sets_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "etc" / "fleet.toml"
    config.parent.mkdir()
    config.write_text(DEFAULT_CONFIG.read_text().replace(
        'acl_file = "acl.toml"', 'acl_file = "policy/topics.toml"'))
    monkeypatch.chdir(tmp_path)
    assert load_settings(config, environ={}).acl_file == tmp_path / "etc/policy/topics.toml"


def test_relative_acl_file_from_the_environment_is_not_relative_to_the_config_file() -> None:
    settings = load_settings(environ={"FLEET_BROKER_ACL_FILE": "site/topics.toml"})
    assert settings.acl_file == Path("site/topics.toml")


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"fleet {fleet.__version__}\n"
