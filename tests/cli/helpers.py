"""Helpers shared by the CLI tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner, Result

from fleet import pki
from fleet.authority import Issued
from fleet.ca import PASSPHRASE_ENV
from fleet.cli.app import app

PROJECT = Path(__file__).resolve().parents[2]
FLEET_SCRIPT = PROJECT / ".venv" / "bin" / "fleet"


@dataclass
class Run:
    """``fleet --data-dir <dir> ...`` in-process; returns the Click result."""

    data_dir: Path
    runner: CliRunner

    def __call__(self, *args: str, env: Mapping[str, str | None] | None = None,
                 input: str | None = None) -> Result:
        return self.runner.invoke(app, ["--data-dir", str(self.data_dir), *args], env=env,
                                  input=input)

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr,
                                       result.exception)
        return result

    def json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **kwargs).stdout)


def csr_for(device_id: str, key: pki.PrivateKey) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    ).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


Enroll = Callable[..., Issued]


def write_pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_text(pki.certificate_pem(cert))
    return path


# -- real processes ---------------------------------------------------------------------------

def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update({"FLEET_DATA_DIR": str(data_dir), "FLEET_EST_METRICS_PORT": "0",
                "FLEET_BROKER_METRICS_PORT": "0",
                PASSPHRASE_ENV: os.environ[PASSPHRASE_ENV], **extra})
    return env


def start(started: list[subprocess.Popen[str]], args: list[str],
          env: Mapping[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen([str(FLEET_SCRIPT), *args], env=dict(env), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started.append(process)
    return process


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float = 30) -> list[str]:
    """stdout lines up to and including the first matching *pattern*."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            stderr = process.stderr.read() if process.stderr else ""
            pytest.fail(f"process ended (rc={process.wait()}): {lines} {stderr}")
        lines.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return lines
    pytest.fail(f"no line matching {pattern!r} within {timeout}s: {lines}")
