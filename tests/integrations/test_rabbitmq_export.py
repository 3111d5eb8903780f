"""`fleet export rabbitmq`: the files, their modes, the password hash RabbitMQ reads, and
the refusals that write nothing (the cluster test runs the real binary on what it writes)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from fleet.cli.app import app
from fleet.integrations.rabbitmq import MANAGEMENT_USER, password_hash
from fleet.pki import DEVICE_ID_PATTERN


def export(data_dir: Path, out: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "export", "rabbitmq",
                                      "--out", str(out), *args])
    return result.exit_code, result.stdout + result.stderr


def test_rabbitmq_export_writes_private_files_and_a_hash_of_the_credentials(
        data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rabbitmq"
    code, output = export(data_dir, out, "--port", "18883", "--management-port", "15673",
                          "--fleet-url", "https://fleet.example:8443")
    assert code == 0, output
    conf = (out / "rabbitmq.conf").read_text()
    for line in ("listeners.tcp = none", "mqtt.listeners.tcp = none",
                 "mqtt.listeners.ssl.default = 127.0.0.1:18883",
                 "ssl_options.verify = verify_peer", "ssl_options.fail_if_no_peer_cert = true",
                 "mqtt.ssl_cert_login = true", "ssl_cert_login_from = common_name",
                 "auth_backends.1 = http",
                 "auth_http.topic_path = https://fleet.example:8443/rabbitmq/topic",
                 "management.tcp.ip = 127.0.0.1", "management.tcp.port = 15673",
                 f"definitions.local.path = {out}/definitions.json"):
        assert line in conf.splitlines(), line
    assert f'{{certfile, "{out}/rabbitmq.pem"}}' in (out / "advanced.config").read_text()
    assert (out / "enabled_plugins").read_text() == \
        "[rabbitmq_mqtt,rabbitmq_auth_backend_http,rabbitmq_management].\n"
    for private in ("server.key", "rabbitmq.key", "definitions.json",
                    "management.credentials"):
        assert stat.S_IMODE((out / private).stat().st_mode) == 0o600, private
    user, password = (out / "management.credentials").read_text().strip().split(":", 1)
    assert user == MANAGEMENT_USER
    assert password not in output
    [defined] = json.loads((out / "definitions.json").read_text())["users"]
    raw = base64.b64decode(defined["password_hash"])
    assert raw[4:] == hashlib.sha256(raw[:4] + password.encode()).digest()
    assert password not in (out / "definitions.json").read_text()


def test_rabbitmq_export_password_hash_is_rabbitmqs_sha256_scheme() -> None:
    """rabbit_password_hashing_sha256: base64(salt + SHA-256(salt + password))."""
    salt = bytes.fromhex("908dc60a")
    expected = base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest()).decode()
    assert password_hash("test12", salt=salt) == expected


def test_rabbitmq_export_management_user_is_no_fleet_identity() -> None:
    """With ssl_cert_login, RabbitMQ's internal backend would let a certificate whose CN
    names one of its users in without a password: no fleet certificate can name it."""
    assert not DEVICE_ID_PATTERN.fullmatch(MANAGEMENT_USER)


def test_rabbitmq_export_refuses_a_plain_http_fleet_url_and_writes_nothing(
        data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rabbitmq"
    code, output = export(data_dir, out, "--fleet-url", "http://localhost:8443")
    assert code != 0
    assert "https://" in output
    assert not out.exists()
