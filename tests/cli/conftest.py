"""Fixtures for the CLI: the Typer app run in-process against a real data dir."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet import pki
from fleet.authority import Authority, Issued, TokenCredential

from .helpers import Enroll, Run, csr_for


@pytest.fixture
def fleet(data_dir: Path) -> Run:
    """The CLI on the fixture data dir (CA in place)."""
    return Run(data_dir, CliRunner())


@pytest.fixture
def empty_fleet(tmp_path: Path) -> Run:
    """The CLI on a data dir that does not exist yet."""
    return Run(tmp_path / "new-data", CliRunner())


@pytest.fixture
def declare(sqlite_authority: Authority) -> Callable[..., None]:
    """Declare groups in the registry the CLI uses, as ``fleet group create`` does."""

    def declare(*names: str) -> None:
        for name in names:
            sqlite_authority.ensure_group(name=name, actor="operator")

    return declare


@pytest.fixture
def enroll(sqlite_authority: Authority) -> Enroll:
    """Enroll a device over the real authority on the same registry the CLI uses."""

    def enroll(device_id: str, group: str = "sensors", *,
               clock: Callable[[], datetime] | None = None) -> Issued:
        authority = sqlite_authority
        if clock is not None:
            authority = Authority(settings=authority.settings, engine=authority.engine,
                                  ca=authority.ca, clock=clock)
        authority.ensure_group(name=group, actor="operator")
        token = authority.create_tokens(group=group, actor="factory")[0]
        key = pki.generate_private_key()
        return authority.enroll(credential=TokenCredential(str(token.token)),
                                csr=csr_for(device_id, key), actor="device")

    return enroll


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; each is stopped (by its pid) at the end."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)
