"""Helpers shared by the CLI tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner, Result

from fleet import pki
from fleet.authority import Issued
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
