"""`fleet export mosquitto` against the real Mosquitto binary: enrolled devices connect with
their certificates and are confined to their topics; a revoked one is refused once the CRL is
rewritten and Mosquitto reloads it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet.acl import load_policy
from fleet.authority import Authority
from fleet.cli.app import app
from fleet.integrations import mosquitto
from fleet.integrations.tlsfiles import TlsFiles
from fleet.settings import Settings

from .conftest import Enroll
from .helpers import Client, Credentials

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fleet(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def on_mosquitto(device: Credentials, directory: Path) -> Credentials:
    return Credentials(name=device.name, cert=device.cert, key=device.key, serial=device.serial,
                       ca=directory / "ca.pem")


def test_mosquitto_admits_enrolled_devices_confines_them_and_refuses_a_revoked_one(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        sqlite_authority: Authority, data_dir: Path, tmp_path: Path,
        started_mosquitto: Callable[[Path, int], subprocess.Popen[bytes]]) -> None:
    d1, d2 = enroll("d1"), enroll("d2")
    ingest = issue_service("ingest")
    port, out = free_port(), tmp_path / "mosquitto"
    fleet(data_dir, "export", "mosquitto", "--out", str(out), "--port", str(port),
          "--user", "root")
    process = started_mosquitto(out / "mosquitto.conf", port)
    clients = [Client(port, on_mosquitto(c, out)) for c in (ingest, d1, d2)]
    service, first, second = clients
    try:
        assert [c.connect() for c in clients] == [0, 0, 0]
        assert service.subscribe("devices/+/telemetry") == [1]
        first.publish("devices/d1/telemetry", b"mine", qos=1)
        first.publish("devices/d2/telemetry", b"spoofed", qos=1)  # Mosquitto acks, drops
        message = service.receive()
        assert message is not None
        assert (message.topic, message.payload) == ("devices/d1/telemetry", b"mine")
        assert service.receive(timeout=1.0) is None
        assert second.subscribe("devices/d1/commands/#") == [1]  # granted, nothing delivered
        service.publish("devices/d1/commands/open", b"x", qos=1)
        assert second.receive(timeout=1.0) is None

        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        fleet(data_dir, "crl", "--force", "--out", str(out / "crl.pem"))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        refused = False
        while not refused and time.monotonic() < deadline:
            again = Client(port, on_mosquitto(d1, out))
            refused = again.connect() is None
            again.close()
            time.sleep(0.1)
        assert refused, "Mosquitto admitted a revoked certificate after the CRL reload"
        # Mosquitto checks the CRL only in new handshakes: the revoked device's live
        # session stays up (docs/scale-out.md: what closes that gap).
        first.publish("devices/d1/telemetry", b"still here", qos=1)
        assert not first.disconnected.is_set()
        stayed = Client(port, on_mosquitto(d2, out))
        assert stayed.connect() == 0
        stayed.close()
    finally:
        for client in clients:
            client.close()


def test_mosquitto_configuration_turns_nagle_off(tmp_path: Path) -> None:
    listener = mosquitto.Listener(host="127.0.0.1", port=8883,
                                  tls=TlsFiles.named(tmp_path, "server"),
                                  crlfile=tmp_path / "crl.pem",
                                  acl_file=tmp_path / "acl",
                                  dynamic_security=mosquitto.DynamicSecurity(
                                      plugin=tmp_path / "plugin.so",
                                      config_file=tmp_path / "dynamic-security.json"))
    assert "set_tcp_nodelay true" in mosquitto.configuration(listener).splitlines()


def test_mosquitto_refuses_a_revoked_device_with_fleet_crl_watch_and_no_manual_step(
        enroll: Enroll, sqlite_authority: Authority, data_dir: Path, tmp_path: Path,
        started_mosquitto: Callable[[Path, int], subprocess.Popen[bytes]]) -> None:
    """`fleet crl --watch --signal` rewrites the exported CRL on the revocation and makes
    Mosquitto reload it: the revoked device's next CONNECT is refused, the other's is not."""
    d1, d2 = enroll("d1"), enroll("d2")
    port, out = free_port(), tmp_path / "mosquitto"
    fleet(data_dir, "export", "mosquitto", "--out", str(out), "--port", str(port),
          "--user", "root")
    process = started_mosquitto(out / "mosquitto.conf", port)
    watch = subprocess.Popen(
        [str(Path(sys.executable).parent / "fleet"), "--data-dir", str(data_dir), "crl",
         "--watch", "--force", "--out", str(out / "crl.pem"), "--signal", str(process.pid)],
        stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stderr is not None
        first = watch.stderr.readline()
        assert f"sent SIGHUP to process {process.pid}" in first, first
        assert (out / "crl.pem").stat().st_mode & 0o777 == 0o644
        device = Client(port, on_mosquitto(d1, out))
        assert device.connect() == 0
        device.close()
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        assert "issuing CA 1: 1 revoked" in watch.stderr.readline()
        deadline = time.monotonic() + 10
        refused = False
        while not refused and time.monotonic() < deadline:
            again = Client(port, on_mosquitto(d1, out))
            refused = again.connect() is None
            again.close()
        assert refused, "Mosquitto admitted a revoked certificate with fleet crl --watch"
        other = Client(port, on_mosquitto(d2, out))
        assert other.connect() == 0
        other.close()
        assert watch.poll() is None
    finally:
        watch.terminate()
        assert watch.wait(20) == 0


def test_mosquitto_acl_translates_the_topic_policy(settings: Settings) -> None:
    text = mosquitto.acl(load_policy(settings.acl_file), devices={"d1": "sensors"},
                         services=["ingest"])
    lines = text.splitlines()
    assert "pattern write devices/%u/telemetry" in lines
    assert "pattern read devices/%u/commands/#" in lines
    block = lines[lines.index("user d1"):]
    assert "topic read groups/sensors/broadcast/#" in block
    ingest = lines[lines.index("user ingest"):]
    assert "topic write devices/+/commands/#" in ingest
    assert "topic read devices/+/telemetry" in ingest
    assert not any("{" in line for line in lines)


def test_mosquitto_export_writes_the_dynamic_security_plugin_and_its_one_admin(
        data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mosquitto"
    plugin = tmp_path / "lib" / mosquitto.PLUGIN_FILE
    fleet(data_dir, "export", "mosquitto", "--out", str(out), "--dynsec-plugin", str(plugin))
    lines = (out / "mosquitto.conf").read_text().splitlines()
    assert f"plugin {plugin}" in lines
    assert f"plugin_opt_config_file {out / 'dynamic-security.json'}" in lines
    config = json.loads((out / "dynamic-security.json").read_text())
    assert set(config["defaultACLAccess"].values()) == {False}
    (client,) = config["clients"]
    assert client["username"] == "mosquitto-kick"
    assert "password" not in client
    (role,) = config["roles"]
    assert {(a["acltype"], a["topic"], a["allow"]) for a in role["acls"]} == {
        ("publishClientSend", "$CONTROL/dynamic-security/v1", True),
        ("subscribeLiteral", "$CONTROL/dynamic-security/v1/response", True),
        ("publishClientReceive", "$CONTROL/dynamic-security/v1/response", True)}
    assert (out / "mosquitto-kick.key").stat().st_mode & 0o777 == 0o600
    shown = json.loads(fleet(data_dir, "cert", "list", "--json"))
    assert [c.get("service") for c in shown] == ["mosquitto-kick"]


def test_mosquitto_export_without_the_plugin_is_refused_and_writes_nothing(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mosquitto, "PLUGIN_DIRECTORIES", (tmp_path / "lib",))
    out = tmp_path / "mosquitto"
    for extra in ([], ["--dynsec-plugin", "lib/mosquitto_dynamic_security.so"]):
        result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "export", "mosquitto",
                                          "--out", str(out), *extra])
        assert result.exit_code != 0
        assert "--dynsec-plugin" in result.stderr
        assert not out.exists()
    assert json.loads(fleet(data_dir, "cert", "list", "--json")) == []


def test_mosquitto_export_refuses_a_kick_service_named_after_a_device(
        enroll: Enroll, data_dir: Path, tmp_path: Path) -> None:
    """A device can never be the plugin's admin: the service name may not be a device's id
    (fleet.registry.names), so the export is refused and no certificate issued."""
    enroll("mosquitto-kick")
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "export", "mosquitto",
                                      "--out", str(tmp_path / "mosquitto")])
    assert result.exit_code != 0
    assert "collides with device/mosquitto-kick" in result.stderr
    shown = json.loads(fleet(data_dir, "cert", "list", "--json"))
    assert [c.get("service") for c in shown] == [None]
