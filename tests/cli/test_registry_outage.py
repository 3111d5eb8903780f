"""The real ``fleet`` command while another process holds the SQLite registry's lock beyond
the busy timeout: one line on stderr, exit code 5, no traceback, nothing changed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from registry_outage import registry_lock

from fleet.cli.app import EXIT_UNAVAILABLE

from .helpers import FLEET_SCRIPT

LOCKED = ("error: registry database unavailable: database is locked "
          "(held by another connection beyond the busy timeout)\n")


def fleet(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "FLEET_DATABASE_BUSY_TIMEOUT": "200ms"}
    return subprocess.run([str(FLEET_SCRIPT), "--data-dir", str(data_dir), *args], env=environ,
                          capture_output=True, text=True, timeout=60, check=False)


def ok(data_dir: Path, *args: str) -> str:
    result = fleet(data_dir, *args)
    assert result.returncode == 0, (result.returncode, result.stderr)
    return result.stdout


def expect_unavailable(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == EXIT_UNAVAILABLE, (result.returncode, result.stderr)
    assert result.stderr == LOCKED
    assert result.stdout == ""


def test_refused_token_create_while_locked_exit_5_and_no_token(data_dir: Path,
                                                                tmp_path: Path) -> None:
    ok(data_dir, "group", "create", "sensors")  # the registry exists, the group is declared
    out = tmp_path / "tokens.csv"
    with registry_lock(data_dir / "fleet.db"):
        expect_unavailable(fleet(data_dir, "token", "create", "--group", "sensors",
                                 "--out", str(out)))
    assert not out.exists()
    assert json.loads(ok(data_dir, "token", "list", "--json")) == []
    ok(data_dir, "token", "create", "--group", "sensors", "--out", str(out))
    assert len(json.loads(ok(data_dir, "token", "list", "--json"))) == 1


def test_device_list_reads_while_a_writer_holds_the_lock(data_dir: Path) -> None:
    ok(data_dir, "device", "list")
    with registry_lock(data_dir / "fleet.db"):
        assert json.loads(ok(data_dir, "device", "list", "--json")) == []


def test_refused_device_list_while_readers_wait_too_exit_5(data_dir: Path) -> None:
    ok(data_dir, "device", "list")
    with registry_lock(data_dir / "fleet.db", readers=True):
        expect_unavailable(fleet(data_dir, "device", "list"))
    assert json.loads(ok(data_dir, "device", "list", "--json")) == []
