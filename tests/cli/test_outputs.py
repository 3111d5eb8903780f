"""Files commands write where the operator says: an existing one is replaced only with
--force, and a directory that does not exist is never created on the way to it. Each refusal
comes before the work (no token minted, no certificate issued, no run) and leaves nothing.

``test_every_output_option_is_covered`` reads the CLI: an option or argument that names a
path to write must be in OUTPUTS, so a new one is covered as soon as it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperGroup

from fleet.cli.app import EXIT_REFUSED, app

from .helpers import Run

FILE, DIRECTORY = "file", "directory"

OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "backup --out": (FILE, ("backup", "--out", "{out}")),
    "ca export-root-key --out": (FILE, ("ca", "export-root-key", "--out", "{out}")),
    "init --export-root-key": (FILE, ("init", "--export-root-key", "{out}")),
    "crl --out": (FILE, ("crl", "--out", "{out}")),
    "token create --out": (FILE, ("token", "create", "--group", "sensors", "--out", "{out}")),
    "sim run --json-report": (FILE, ("sim", "run", "--json-report", "{out}")),
    "sim run --html-report": (FILE, ("sim", "run", "--html-report", "{out}")),
    "sim run --store-dir": (DIRECTORY, ("sim", "run", "--store-dir", "{out}")),
    "cert issue-service --out-dir": (DIRECTORY, ("cert", "issue-service", "backend",
                                                 "--out-dir", "{out}")),
    "export mosquitto --out": (DIRECTORY, ("export", "mosquitto", "--out", "{out}")),
    "export emqx --out": (DIRECTORY, ("export", "emqx", "--out", "{out}")),
    "export rabbitmq --out": (DIRECTORY, ("export", "rabbitmq", "--out", "{out}")),
    "restore --config-dir": (DIRECTORY, ("restore", "{backup}", "--config-dir", "{out}")),
}
"""Every path the CLI writes: what it is, and a command line that writes it."""

SIDE_EFFECTS = ("token", "list"), ("cert", "list")
"""What a refused command must not have done: mint tokens, issue certificates."""


@pytest.fixture(autouse=True)
def _groups(declare: Callable[..., None]) -> None:
    """The group these tests mint tokens for is declared."""
    declare("sensors")


NAMED_NOT_WRITTEN = {"export mosquitto --dynsec-plugin"}
"""Path options that name a file for another program to open (Mosquitto's plugin, on the
broker's host), neither read nor written by the CLI."""


def _paths_to_write() -> set[str]:
    found: set[str] = set()

    def walk(group: TyperGroup, prefix: str) -> None:
        for name, command in group.commands.items():
            if isinstance(command, TyperGroup):
                walk(command, f"{prefix}{name} ")
                continue
            for param in command.params:
                descriptor = param.type_descriptor  # type: ignore[attr-defined]
                if descriptor.annotation in (Path, Path | None) \
                        and not getattr(descriptor.parameter_info, "exists", False):
                    found.add(f"{prefix}{name} {param.opts[0]}")

    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    walk(root, "")
    return found


def test_every_output_option_is_covered() -> None:
    assert _paths_to_write() - NAMED_NOT_WRITTEN == set(OUTPUTS)


def _restore_target(fleet: Run, tmp_path: Path, name: str) -> tuple[Run, dict[str, str]]:
    """The CLI to run *name* with, and the values of its placeholders: restore writes into a
    new data dir from a backup of the fixture's."""
    backup = tmp_path / "fleet.backup"
    if name.startswith("restore"):
        fleet.ok("backup", "--out", str(backup))
        return Run(tmp_path / "restored", fleet.runner), {"backup": str(backup)}
    return fleet, {}


def _registry_untouched(fleet: Run) -> None:
    for command in SIDE_EFFECTS:
        assert fleet.json(*command) == [], command


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_output_in_a_directory_that_does_not_exist_is_refused_and_nothing_is_created(
        name: str, fleet: Run, tmp_path: Path) -> None:
    _, args = OUTPUTS[name]
    run, values = _restore_target(fleet, tmp_path, name)
    missing = tmp_path / "no-such-dir"
    out = missing / "deeper" / "target"
    result = run(*(a.format(out=out, **values) for a in args))
    assert result.exit_code == EXIT_REFUSED, (result.stdout, result.stderr)
    assert f"{out.parent} is not a directory" in result.stderr
    assert not missing.exists()
    assert not (tmp_path / "restored").exists()
    _registry_untouched(fleet)


@pytest.mark.parametrize("name", sorted(n for n, (kind, _) in OUTPUTS.items() if kind == FILE))
def test_output_file_that_exists_is_kept_without_force(
        name: str, fleet: Run, tmp_path: Path) -> None:
    _, args = OUTPUTS[name]
    out = tmp_path / "kept.txt"
    out.write_text("an operator's file\n")
    result = fleet(*(a.format(out=out) for a in args))
    assert result.exit_code == EXIT_REFUSED, (result.stdout, result.stderr)
    assert f"{out} exists; use --force to replace it" in result.stderr
    assert out.read_text() == "an operator's file\n"
    _registry_untouched(fleet)


@pytest.mark.parametrize("name", sorted(n for n, (kind, _) in OUTPUTS.items()
                                        if kind == DIRECTORY and not n.startswith("cert")))
def test_output_directory_that_is_not_empty_is_kept_without_force(
        name: str, fleet: Run, tmp_path: Path) -> None:
    _, args = OUTPUTS[name]
    run, values = _restore_target(fleet, tmp_path, name)
    out = tmp_path / "kept"
    out.mkdir()
    (out / "mine.txt").write_text("an operator's file\n")
    result = run(*(a.format(out=out, **values) for a in args))
    assert result.exit_code == EXIT_REFUSED, (result.stdout, result.stderr)
    assert str(out) in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not (tmp_path / "restored").exists()


def test_token_file_is_replaced_with_force_only(fleet: Run, tmp_path: Path) -> None:
    """Minting 2 into the file of 500 used to replace them, leaving 500 live tokens whose
    secrets were gone."""
    out = tmp_path / "tokens.csv"
    fleet.ok("token", "create", "--group", "sensors", "--count", "3", "--out", str(out))
    first = out.read_text()
    refused = fleet("token", "create", "--group", "sensors", "--count", "2", "--out", str(out))
    assert refused.exit_code == EXIT_REFUSED
    assert out.read_text() == first
    assert len(fleet.json("token", "list")) == 3  # refused before minting
    fleet.ok("token", "create", "--group", "sensors", "--count", "2", "--out", str(out),
               "--force")
    assert len(out.read_text().splitlines()) == 1 + 2
    assert out.stat().st_mode & 0o777 == 0o600


def test_token_file_held_while_minting_is_removed_when_nothing_was_minted(
        fleet: Run, tmp_path: Path) -> None:
    out = tmp_path / "tokens.csv"
    result = fleet("token", "create", "--group", "sensors", "--device", "bad id",
                     "--out", str(out))
    assert result.exit_code != 0
    assert not out.exists()
    assert list(tmp_path.glob("tokens*")) == []


def test_crl_file_is_replaced_with_force_only(fleet: Run, tmp_path: Path) -> None:
    out = tmp_path / "crl.pem"
    fleet.ok("crl", "--out", str(out))
    out.write_text("stale\n")
    assert fleet("crl", "--out", str(out)).exit_code == EXIT_REFUSED
    assert out.read_text() == "stale\n"
    fleet.ok("crl", "--out", str(out), "--force")
    assert out.read_text().startswith("-----BEGIN X509 CRL-----")


def test_service_certificates_share_a_directory_and_its_ca_pem(fleet: Run,
                                                               tmp_path: Path) -> None:
    """ca.pem holding the chain already is left as it is; holding another, it is replaced
    with --force only, and no certificate is issued before."""
    out = tmp_path / "services"
    fleet.ok("cert", "issue-service", "ingest", "--out-dir", str(out))
    chain = (out / "ca.pem").read_bytes()
    fleet.ok("cert", "issue-service", "alerts", "--out-dir", str(out))
    assert (out / "ca.pem").read_bytes() == chain
    (out / "ca.pem").write_text("another CA\n")
    refused = fleet("cert", "issue-service", "billing", "--out-dir", str(out))
    assert refused.exit_code == EXIT_REFUSED
    assert f"{out / 'ca.pem'} exists; use --force to replace it" in refused.stderr
    assert not (out / "billing.key").exists()
    assert [c["service"] for c in fleet.json("cert", "list")] == ["ingest", "alerts"]
    fleet.ok("cert", "issue-service", "billing", "--out-dir", str(out), "--force")
    assert (out / "ca.pem").read_bytes() == chain


def test_sim_report_is_refused_before_the_run(fleet: Run, tmp_path: Path) -> None:
    """A report path that cannot be written is known before minutes of simulation, not
    after; the run does not start (no EST service is listening here)."""
    report = tmp_path / "run.json"
    report.write_text("{}\n")
    result = fleet("sim", "run", "--json-report", str(report), "--html-report",
                   str(tmp_path / "run.html"), "--est-url", "https://127.0.0.1:9")
    assert result.exit_code == EXIT_REFUSED
    assert f"{report} exists; use --force to replace it" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet-data", "run.json"]
