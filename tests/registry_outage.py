"""Registry outages for tests: another process holding the SQLite lock, and a PostgreSQL
cluster of the test's own that it stops and starts again."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PG_SH = PROJECT / "tests" / "pg.sh"

_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "readers":
    # WAL readers do not wait for a writer; in exclusive locking mode they wait too.
    connection.execute("PRAGMA locking_mode=EXCLUSIVE")
connection.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
"""


@contextmanager
def registry_lock(database: Path, *, readers: bool = False) -> Iterator[None]:
    """Another process holds the write lock of the SQLite file *database* (with *readers*,
    reads wait as well) until the block ends, however long that is."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(database), "readers" if readers else "writers"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        if holder.stdin is not None:
            holder.stdin.close()  # the holder reads EOF, rolls back and exits
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


class PostgresCluster:
    """A throw-away PostgreSQL cluster (tests/pg.sh) the test may stop and start again on the
    same port; never the shared test server."""

    def __init__(self) -> None:
        if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
            # Under CI=true a skip is a failure (tests/conftest.py).
            pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
        # Outside pytest's 0700 temporary directories: the server runs as user postgres.
        self._base = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        os.chmod(self._base, 0o755)
        self.directory = self._base / "cluster"
        self.url = ""

    def start(self) -> str:
        """Start the cluster (made on the first call) and wait until it accepts connections."""
        out = subprocess.run([str(PG_SH), "start", str(self.directory)], check=True,
                             capture_output=True, text=True, timeout=120).stdout
        match = re.search(r"FLEET_TEST_POSTGRES_URL=(\S+)", out)
        assert match, out
        self.url = match.group(1)
        return self.url

    def stop(self) -> None:
        subprocess.run([str(PG_SH), "stop", str(self.directory)], check=True,
                       capture_output=True, timeout=120)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self._base, ignore_errors=True)
