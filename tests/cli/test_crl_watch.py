"""`fleet crl --watch --out FILE [--signal PID]`: the file rewritten on every revocation,
0644 whatever the umask, the process signalled after each rewrite; refusals before anything
is written; the watch exits 1 when the process it signals exits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from fleet import pki
from fleet.authority import Authority
from fleet.cli.app import EXIT_NOT_FOUND, EXIT_REFUSED

from .helpers import FLEET_SCRIPT, Enroll, Run, csr_for

HUP_COUNTER = """
import signal, sys
def hup(*_):
    print("hup", flush=True)
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
while True:
    signal.pause()
"""


def until(condition: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def listed(path: Path) -> set[int]:
    try:
        return {entry.serial_number for entry in x509.load_pem_x509_crl(path.read_bytes())}
    except (OSError, ValueError):
        return set()


def test_crl_watch_refusals_leave_nothing_behind(fleet: Run, tmp_path: Path) -> None:
    out = tmp_path / "crl.pem"
    result = fleet("crl", "--watch")
    assert result.exit_code == EXIT_REFUSED
    assert "--watch keeps a file current: name it with --out FILE" in result.stderr
    result = fleet("crl", "--out", str(out), "--signal", str(os.getpid()))
    assert result.exit_code == EXIT_REFUSED
    assert "--signal PID goes with --watch" in result.stderr
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    result = fleet("crl", "--watch", "--out", str(out), "--signal", str(gone.pid))
    assert result.exit_code == EXIT_NOT_FOUND
    assert f"no process {gone.pid} to signal" in result.stderr
    assert not out.exists()
    out.write_text("an operator's file\n")
    result = fleet("crl", "--watch", "--out", str(out))
    assert result.exit_code == EXIT_REFUSED
    assert f"{out} exists; use --force to replace it" in result.stderr
    assert out.read_text() == "an operator's file\n"
    result = fleet("crl", "--watch", "--out", str(tmp_path / "missing" / "crl.pem"))
    assert result.exit_code == EXIT_REFUSED
    assert "is not a directory" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_crl_watch_rewrites_on_revocation_signals_and_exits_1_when_the_process_exits(
        fleet: Run, enroll: Enroll, sqlite_authority: Authority, tmp_path: Path,
        started: list[subprocess.Popen[str]]) -> None:
    serial = enroll("dev-1").certificate.serial_number
    target = subprocess.Popen([sys.executable, "-c", HUP_COUNTER], stdout=subprocess.PIPE,
                              text=True)
    started.append(target)
    assert target.stdout is not None
    assert target.stdout.readline() == "ready\n"
    out = tmp_path / "crl.pem"
    watch = subprocess.Popen(
        [str(FLEET_SCRIPT), "--data-dir", str(fleet.data_dir), "crl", "--watch", "--out",
         str(out), "--signal", str(target.pid)],
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.umask(0o077))
    started.append(watch)
    assert watch.stderr is not None
    assert f"sent SIGHUP to process {target.pid}" in watch.stderr.readline()
    assert target.stdout.readline() == "hup\n"  # after the first write
    assert out.stat().st_mode & 0o777 == 0o644  # Mosquitto's user reads it again on SIGHUP
    assert listed(out) == set()

    sqlite_authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="operator")
    assert "issuing CA 1: 1 revoked" in watch.stderr.readline()
    assert listed(out) == {serial}
    assert target.stdout.readline() == "hup\n"  # after the rewrite
    assert out.stat().st_mode & 0o777 == 0o644

    target.kill()
    target.wait(10)
    assert watch.wait(20) == EXIT_REFUSED
    assert f"process {target.pid} exited" in watch.stderr.read()


def test_crl_watch_rewrites_when_a_superseded_grace_ends(
        fleet: Run, enroll: Enroll, sqlite_authority: Authority, tmp_path: Path,
        started: list[subprocess.Popen[str]]) -> None:
    """No revocation event marks the end of a grace: the watch rewrites at that moment,
    since the CRL lists the superseded certificate from then on."""
    old = enroll("dev-1")
    out = tmp_path / "crl.pem"
    watch = subprocess.Popen(
        [str(FLEET_SCRIPT), "--data-dir", str(fleet.data_dir), "crl", "--watch", "--out",
         str(out)], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FLEET_CERTIFICATES_SUPERSEDED_GRACE": "2s"})
    started.append(watch)
    assert watch.stderr is not None
    assert "wrote 1 CRL(s)" in watch.stderr.readline()
    short = Authority(settings=sqlite_authority.settings.with_overrides(
        superseded_grace=timedelta(seconds=2)), engine=sqlite_authority.engine,
        ca=sqlite_authority.ca)
    short.reenroll(client_certificate=old.certificate,
                   csr=csr_for("dev-1", pki.generate_private_key()), actor="dev-1")
    assert "0 revoked" in watch.stderr.readline()  # the supersession event: still in grace
    assert until(lambda: listed(out) == {old.certificate.serial_number})
    watch.terminate()
    assert watch.wait(20) == 0
