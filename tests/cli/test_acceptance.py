"""The installed ``fleet`` console script, run for real with openssl downstream."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.ca import PASSPHRASE_ENV
from fleet.registry import make_engine
from fleet.settings import load_settings

from .helpers import FLEET_SCRIPT, csr_for

pytestmark = pytest.mark.slow


def shell(command: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run *command* in bash, in the data dir's parent, with the console script on PATH and
    no passphrase in the environment."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLEET_") and k != PASSPHRASE_ENV}
    env["FLEET_DATA_DIR"] = str(data_dir)
    env["PATH"] = f"{FLEET_SCRIPT.parent}:{env.get('PATH', '')}"
    return subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], env=env,
                          cwd=data_dir.parent, capture_output=True, text=True, timeout=120,
                          check=False)


def test_acceptance_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "fleet-data"
    done = shell("fleet init && fleet group create sensors "
                 "&& fleet token create --group sensors --json "
                 "&& fleet crl | openssl crl -noout -text", data_dir)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "created CA" in out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("["))
    [token] = json.loads(lines[at])
    assert set(token) == {"id", "token", "group", "device_id", "uses", "expires_at"}
    assert token["group"] == "sensors"
    crl_text = "\n".join(lines[at + 1:])
    assert "Certificate Revocation List (CRL)" in crl_text
    assert "No Revoked Certificates." in crl_text
    passphrase = (data_dir / "ca/passphrase").read_text().strip()
    assert passphrase not in out + done.stderr
    assert stat.S_IMODE((data_dir / "ca/passphrase").stat().st_mode) == 0o600


@pytest.fixture
def initialized(tmp_path: Path) -> Path:
    data_dir = tmp_path / "fleet-data"
    assert shell("fleet init", data_dir).returncode == 0
    return data_dir


def enroll_device(data_dir: Path, device_id: str) -> int:
    """Enroll over the authority, unlocking the CA with the passphrase file `init` wrote."""
    settings = load_settings(environ={"FLEET_DATA_DIR": str(data_dir)})
    engine: Engine = make_engine(settings.effective_database_url)
    try:
        previous = os.environ.pop(PASSPHRASE_ENV, None)
        try:
            authority = Authority(settings=settings, engine=engine)
            authority.ensure_group(name="sensors", actor="operator")
            token = authority.create_tokens(group="sensors", actor="factory")[0]
            issued = authority.enroll(credential=TokenCredential(str(token.token)),
                                      csr=csr_for(device_id, pki.generate_private_key()),
                                      actor="device")
        finally:
            if previous is not None:
                os.environ[PASSPHRASE_ENV] = previous
        return issued.certificate.serial_number
    finally:
        engine.dispose()


def test_revoked_device_is_on_crl_that_openssl_verifies(initialized: Path) -> None:
    serial = enroll_device(initialized, "dev-1")
    enroll_device(initialized, "dev-2")
    done = shell("fleet device revoke dev-1 --reason keyCompromise && fleet crl --out crl.pem "
                 f"&& openssl crl -in crl.pem -CAfile {initialized}/ca/chain.pem -noout -text",
                 initialized)
    assert done.returncode == 0, done.stderr
    assert "verify OK" in done.stderr + done.stdout
    listed = [int(m, 16) for m in re.findall(r"Serial Number: ([0-9A-F]+)", done.stdout)]
    assert listed == [serial]
    assert "Key Compromise" in done.stdout


def test_service_certificate_verifies_with_openssl(initialized: Path) -> None:
    done = shell("fleet cert issue-service backend --out-dir svc && "
                 "openssl verify -CAfile \"$FLEET_DATA_DIR/ca/root.pem\" "
                 "-untrusted \"$FLEET_DATA_DIR/ca/issuing.pem\" svc/backend.pem && "
                 "openssl verify -CAfile \"$FLEET_DATA_DIR/ca/root.pem\" -untrusted svc/ca.pem "
                 "svc/backend.pem", initialized)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("svc/backend.pem: OK") == 2


def test_refusal_is_one_line_on_stderr(initialized: Path) -> None:
    done = shell("fleet device show ghost", initialized)
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr == "error: unknown device 'ghost'\n"
