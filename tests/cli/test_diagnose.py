from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleet import pki
from fleet.authority import ADMISSION_CHECKS, Authority
from fleet.cli.app import EXIT_REFUSED, EXIT_USAGE

from .helpers import Enroll, Run, csr_for, write_pem

REPORT_KEYS = {"file", "serial", "subject", "identity", "not_before", "not_after",
               "fingerprint_sha256", "checks", "admitted", "refused_at", "connack"}


def results(report: dict[str, Any]) -> dict[str, str]:
    return {c["check"]: c["result"] for c in report["checks"]}


def diagnose_json(fleet: Run, *args: str) -> tuple[int, dict[str, Any], str]:
    result = fleet("diagnose", *args, "--json")
    return result.exit_code, json.loads(result.stdout), result.stderr


def test_diagnose_admits_valid_certificate(fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    code, report, _ = diagnose_json(fleet, str(cert), "--client-id", "dev-1")
    assert code == 0
    assert set(report) == REPORT_KEYS
    assert report["admitted"] is True
    assert report["identity"] == "device/dev-1"
    assert report["connack"] == "0x00 accepted"
    assert results(report) == {"issuer": "ok", "validity": "ok", "key usage": "ok",
                               "identity": "ok", "client id": "ok", "session": "skip",
                               "revocation state": "skip", "registry": "ok", "grace": "ok",
                               "will": "skip"}
    for check in report["checks"]:
        assert set(check) == {"check", "stage", "result", "detail"}
    assert "only the running broker knows" in next(
        c["detail"] for c in report["checks"] if c["check"] == "revocation state")
    human = fleet.ok("diagnose", str(cert)).stdout
    assert "requires client id 'dev-1'" in human


def test_diagnose_refused_client_id_mismatch(fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    code, report, stderr = diagnose_json(fleet, str(cert), "--client-id", "dev-2")
    assert code == EXIT_REFUSED
    assert report["refused_at"] == "client id"
    assert report["connack"].startswith("0x02")
    error = json.loads(stderr)  # one line: the refusal as JSON, like the report
    assert error["exit_code"] == EXIT_REFUSED
    assert error["error"].startswith("the broker would refuse this certificate at the client id")


def test_diagnose_refused_revoked_device(fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    code, report, stderr = diagnose_json(fleet, str(cert))
    assert code == EXIT_REFUSED
    assert report["refused_at"] == "registry"
    assert report["connack"].startswith("0x05")
    assert "revoked" in stderr


def test_diagnose_refused_revoked_certificate(fleet: Run, enroll: Enroll,
                                              tmp_path: Path) -> None:
    issued = enroll("dev-1")
    cert = write_pem(tmp_path / "dev.pem", issued.certificate)
    fleet.ok("cert", "revoke", issued.record.serial, "--reason", "keyCompromise")
    code, report, _ = diagnose_json(fleet, str(cert))
    assert code == EXIT_REFUSED
    assert results(report)["registry"] == "fail"
    assert f"certificate {issued.record.serial} is revoked" in str(report["checks"])


def test_diagnose_refused_suspended_device(fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    fleet.ok("device", "suspend", "dev-1")
    code, report, _ = diagnose_json(fleet, str(cert))
    assert code == EXIT_REFUSED
    assert "device dev-1 is suspended" in str(report["checks"])


def test_diagnose_refused_expired_certificate(fleet: Run, enroll: Enroll,
                                             tmp_path: Path) -> None:
    old = enroll("dev-1", clock=lambda: datetime.now(UTC) - timedelta(days=40))
    code, report, _ = diagnose_json(fleet, str(write_pem(tmp_path / "old.pem", old.certificate)))
    assert code == EXIT_REFUSED
    assert report["refused_at"] == "validity"
    assert report["connack"].startswith("none: the TLS handshake fails")
    assert results(report) == {"issuer": "ok", "validity": "fail", **dict.fromkeys(
        ("key usage", "identity", "client id", "session", "revocation state", "registry",
         "grace", "will"), "skip")}


def test_diagnose_refused_foreign_ca(fleet: Run, tmp_path: Path) -> None:
    key = pki.generate_private_key()
    now = datetime.now(UTC)
    root = pki.issue_certificate(profile=pki.ca_profile("Other Root", lifetime=timedelta(days=1),
                                                        path_length=0),
                                 public_key=key.public_key(), issuer_key=key, issuer=None, now=now)
    leaf_key = pki.generate_private_key()
    leaf = pki.issue_certificate(
        profile=pki.identity_profile(pki.Identity("device", "dev-1"), trust_domain="fleet.local",
                                     lifetime=timedelta(days=1)),
        public_key=leaf_key.public_key(), issuer_key=key, issuer=root, now=now)
    code, report, _ = diagnose_json(fleet, str(write_pem(tmp_path / "x.pem", leaf)))
    assert code == EXIT_REFUSED
    assert report["refused_at"] == "issuer"
    assert report["identity"] is None


def test_diagnose_refused_server_certificate_without_client_auth(fleet: Run) -> None:
    code, report, _ = diagnose_json(fleet, str(fleet.data_dir / "server/cert.pem"))
    assert code == EXIT_REFUSED
    assert report["refused_at"] == "key usage"


def test_diagnose_service_certificate(fleet: Run, tmp_path: Path) -> None:
    fleet.ok("cert", "issue-service", "backend", "--out-dir", str(tmp_path))
    code, report, _ = diagnose_json(fleet, str(tmp_path / "backend.pem"), "--client-id",
                                    "backend-1", "--subscribe", "devices/+/telemetry")
    assert code == 0
    assert report["identity"] == "service/backend"
    assert results(report)["subscribe"] == "ok"


def test_diagnose_topic_allowed(fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    code, report, _ = diagnose_json(fleet, str(cert), "--publish", "devices/dev-1/telemetry",
                                    "--subscribe", "devices/dev-1/commands/reboot")
    assert code == 0
    assert results(report)["publish"] == "ok"
    assert results(report)["subscribe"] == "ok"  # an exact topic, checked as a subscription


def test_diagnose_refused_topic_of_another_device(fleet: Run, enroll: Enroll,
                                                  tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    code, report, stderr = diagnose_json(fleet, str(cert), "--publish", "devices/dev-2/telemetry")
    assert code == EXIT_REFUSED
    assert report["refused_at"] == "publish"
    assert report["admitted"] is True  # connects, but may not publish there
    assert "may not publish to 'devices/dev-2/telemetry'" in stderr


def test_diagnose_refused_subscribe_filter_wider_than_granted(fleet: Run, enroll: Enroll,
                                                              tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    code, report, _ = diagnose_json(fleet, str(cert), "--subscribe", "devices/+/commands/#")
    assert code == EXIT_REFUSED
    assert "may not subscribe to" in str(report["checks"])


def test_diagnose_refused_not_a_certificate(fleet: Run, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    result = fleet("diagnose", str(junk))
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr == f"error: {junk} is not a PEM or DER certificate\n"


def test_diagnose_refused_unknown_to_registry(fleet: Run, sqlite_authority: Authority,
                                             tmp_path: Path) -> None:
    # Signed by the fleet CA but never recorded: the registry check refuses it.
    key = pki.generate_private_key()
    cert = pki.issue_certificate(
        profile=pki.identity_profile(pki.Identity("device", "ghost"), trust_domain="fleet.local",
                                     lifetime=timedelta(days=1)),
        public_key=key.public_key(), issuer_key=sqlite_authority.ca.issuing_key,
        issuer=sqlite_authority.ca.issuing, now=datetime.now(UTC))
    code, report, _ = diagnose_json(fleet, str(write_pem(tmp_path / "g.pem", cert)))
    assert code == EXIT_REFUSED
    assert "not in the registry" in str(report["checks"])


def test_diagnose_checks_are_the_brokers_admission_checks(fleet: Run, enroll: Enroll,
                                                          tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    _, report, _ = diagnose_json(fleet, str(cert))
    assert [c["check"] for c in report["checks"]] == [c.name for c in ADMISSION_CHECKS]


def test_diagnose_refused_forbidden_will_topic(fleet: Run, enroll: Enroll,
                                               tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    code, report, stderr = diagnose_json(fleet, str(cert), "--client-id", "dev-1",
                                         "--will-topic", "devices/dev-2/status")
    assert code == EXIT_REFUSED
    assert report["refused_at"] == "will"
    assert report["connack"] == "0x05 not authorized"
    assert "may not publish its will to 'devices/dev-2/status'" in stderr
    code, report, _ = diagnose_json(fleet, str(cert), "--will-topic", "devices/dev-1/state")
    assert code == 0
    assert results(report)["will"] == "ok"


def test_diagnose_superseded_certificate_within_and_past_its_grace(
        fleet: Run, enroll: Enroll, tmp_path: Path, sqlite_authority: Authority) -> None:
    old = enroll("dev-1")
    cert = write_pem(tmp_path / "old.pem", old.certificate)
    sqlite_authority.reenroll(client_certificate=old.certificate,
                              csr=csr_for("dev-1", pki.generate_private_key()), actor="device")
    code, report, _ = diagnose_json(fleet, str(cert))
    assert code == 0
    assert "usable until" in next(c["detail"] for c in report["checks"] if c["check"] == "grace")
    result = fleet("diagnose", str(cert), "--json",
                   env={"FLEET_CERTIFICATES_SUPERSEDED_GRACE": "0s"})
    report = json.loads(result.stdout)
    assert result.exit_code == EXIT_REFUSED
    assert report["refused_at"] == "grace"
    assert report["connack"] == "0x05 not authorized"


def test_diagnose_refused_publish_to_a_filter(fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    code, report, _ = diagnose_json(fleet, str(cert), "--publish", "devices/dev-1/#")
    assert code == EXIT_REFUSED
    assert "not a valid MQTT topic name" in str(report["checks"])


def test_diagnose_reads_openssl_print_certs_output(fleet: Run, enroll: Enroll,
                                                   tmp_path: Path) -> None:
    """`openssl pkcs7 -print_certs` writes subject=/issuer= lines before each PEM block."""
    der = tmp_path / "dev.p7"
    der.write_bytes(pki.certs_only([enroll("dev-1").certificate]))
    printed = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", str(der),
                              "-print_certs", "-out", str(tmp_path / "dev.pem")],
                             check=True, capture_output=True)
    assert printed.returncode == 0
    assert (tmp_path / "dev.pem").read_text().startswith("subject=")
    code, report, _ = diagnose_json(fleet, str(tmp_path / "dev.pem"), "--client-id", "dev-1")
    assert code == 0
    assert report["identity"] == "device/dev-1"


def test_diagnose_picks_the_device_certificate_out_of_a_chain(fleet: Run, enroll: Enroll,
                                                              tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text((fleet.data_dir / "ca/chain.pem").read_text()
                      + pki.certificate_pem(enroll("dev-1").certificate))
    code, report, _ = diagnose_json(fleet, "--cert", str(bundle))
    assert code == 0
    assert report["identity"] == "device/dev-1"


def test_diagnose_refused_a_file_with_two_device_certificates(fleet: Run, enroll: Enroll,
                                                              tmp_path: Path) -> None:
    two = tmp_path / "two.pem"
    two.write_text(pki.certificate_pem(enroll("dev-1").certificate)
                   + pki.certificate_pem(enroll("dev-2").certificate))
    result = fleet("diagnose", str(two))
    assert result.exit_code == EXIT_REFUSED
    assert "expected one end-entity certificate, found 2" in result.stderr


@pytest.mark.parametrize("args", [
    pytest.param(("--cert", "{cert}", "{cert}"), id="certificate-given-twice"),
    pytest.param((), id="no-certificate"),
    pytest.param(("{cert}", "--key", "{cert}"), id="key-without-host"),
    pytest.param(("{cert}", "--host", "127.0.0.1"), id="host-without-key"),
])
def test_diagnose_refused_option_combinations(fleet: Run, enroll: Enroll, tmp_path: Path,
                                              args: tuple[str, ...]) -> None:
    cert = write_pem(tmp_path / "dev.pem", enroll("dev-1").certificate)
    result = fleet("diagnose", *(a.format(cert=cert) for a in args))
    assert result.exit_code == EXIT_USAGE, result.stdout
