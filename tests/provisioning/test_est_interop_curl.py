"""Interop: the curl + openssl recipe of the EST wire notes, typed as an operator would."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from est_support import Est

pytestmark = pytest.mark.slow

PRELUDE = """set -euo pipefail
EST=https://localhost:{port}/.well-known/est
b64d(){{ tr -d '\\r\\n \\t' | base64 -d; }}
"""
CACERTS = "curl --cacert ca.pem $EST/cacerts | b64d | openssl pkcs7 -inform DER -print_certs\n"
NEW_KEY_AND_CSR = (
    "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key \\\n"
    '    -subj "/CN={device}" -outform DER -out dev.csr.der\n')
ENROLL_BASIC = """base64 -w64 dev.csr.der | curl --cacert ca.pem -u '{device}:{token}' \\
    -H 'Content-Type: application/pkcs10' --data-binary @- $EST/simpleenroll \\
    | b64d | openssl pkcs7 -inform DER -print_certs -out dev.pem
"""
ENROLL_BEARER = """base64 -w64 dev.csr.der | curl --cacert ca.pem \\
    -H 'Authorization: Bearer {token}' \\
    -H 'Content-Type: application/pkcs10' --data-binary @- $EST/simpleenroll \\
    | b64d | openssl pkcs7 -inform DER -print_certs -out dev.pem
"""
RENEW = """openssl req -new -key dev.key -subj "/CN={device}" -outform DER -out renew.csr.der
base64 -w64 renew.csr.der | curl --cacert ca.pem --cert dev.pem --key dev.key \\
    -H 'Content-Type: application/pkcs10' --data-binary @- $EST/simplereenroll \\
    | b64d | openssl pkcs7 -inform DER -print_certs -out renewed.pem
"""
REKEY = """openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout new.key \\
    -subj "/CN={device}" -outform DER -out rekey.csr.der
base64 -w64 rekey.csr.der | curl --cacert ca.pem --cert renewed.pem --key dev.key \\
    -H 'Content-Type: application/pkcs10' --data-binary @- $EST/simplereenroll \\
    | b64d | openssl pkcs7 -inform DER -print_certs -out rekeyed.pem
"""


@pytest.fixture
def shell(est: Est, tmp_path: Path) -> object:
    for tool in ("curl", "openssl", "base64"):
        if shutil.which(tool) is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} is not installed")
            pytest.skip(f"{tool} is not installed")
    workdir = tmp_path / "operator"
    workdir.mkdir()
    shutil.copy(est.ca_file, workdir / "ca.pem")

    def run(script: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["bash", "-c", PRELUDE.format(port=est.port) + script],
                                cwd=workdir, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    run.workdir = workdir  # type: ignore[attr-defined]
    return run


def _cert(path: Path) -> x509.Certificate:
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    assert len(certs) == 1
    return certs[0]


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_curl_cacerts_prints_the_chain(est: Est, shell: object) -> None:
    out = shell(CACERTS).stdout  # type: ignore[operator]
    assert "CN = Fleet Issuing CA" in out
    assert "CN = Fleet Root CA" in out


def test_curl_enroll_with_basic_then_renew_and_rekey(est: Est, shell: object) -> None:
    token = est.token()
    values = {"device": "curl-dev", "token": token}
    shell((NEW_KEY_AND_CSR + ENROLL_BASIC).format(**values))  # type: ignore[operator]
    workdir: Path = shell.workdir  # type: ignore[attr-defined]
    enrolled = _cert(workdir / "dev.pem")
    assert _cn(enrolled) == "curl-dev"

    shell(RENEW.format(**values))  # type: ignore[operator]
    renewed = _cert(workdir / "renewed.pem")
    assert renewed.public_key() == enrolled.public_key()
    assert renewed.serial_number != enrolled.serial_number

    shell(REKEY.format(**values))  # type: ignore[operator]
    rekeyed = _cert(workdir / "rekeyed.pem")
    assert rekeyed.public_key() != enrolled.public_key()
    assert _cn(rekeyed) == "curl-dev"
    assert [e.outcome for e in est.audit("reenroll")] == ["ok", "ok"]


def test_curl_enroll_with_bearer(est: Est, shell: object) -> None:
    values = {"device": "curl-bearer", "token": est.token()}
    shell((NEW_KEY_AND_CSR + ENROLL_BEARER).format(**values))  # type: ignore[operator]
    workdir: Path = shell.workdir  # type: ignore[attr-defined]
    assert _cn(_cert(workdir / "dev.pem")) == "curl-bearer"


def test_curl_without_credentials_gets_the_basic_challenge(est: Est, shell: object) -> None:
    out = shell(  # type: ignore[operator]
        NEW_KEY_AND_CSR.format(device="curl-anon")
        + "base64 -w64 dev.csr.der | curl -s -i --cacert ca.pem "
          "-H 'Content-Type: application/pkcs10' --data-binary @- $EST/simpleenroll\n").stdout
    assert out.startswith("HTTP/1.1 401")
    assert 'WWW-Authenticate: Basic realm="fleet"' in out
