"""`fleet up` and `fleet serve` as an operator watches them: the metrics URLs they print, a
scrape of both services during real traffic, and their log lines (JSON, levels)."""

from __future__ import annotations

import base64
import json
import re
import signal
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from broker.health_helpers import metric
from broker.helpers import Client, Credentials, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from fleet import pki

from .helpers import Run, csr_for, read_until, service_env, start

NOT_AUTHORIZED = 5
METRICS_URL = re.compile(r"^(EST|MQTT) metrics: http://127\.0\.0\.1:(\d+)/metrics$")


def enroll_over_est(est_port: int, chain: Path, token: str, device_id: str,
                    out: Path) -> Credentials:
    """simpleenroll over real TLS with the token as the Basic password, as a device does."""
    key = pki.generate_private_key()
    csr = x509.load_pem_x509_csr(csr_for(device_id, key)).public_bytes(
        serialization.Encoding.DER)
    request = urllib.request.Request(
        f"https://localhost:{est_port}/.well-known/est/simpleenroll",
        data=base64.b64encode(csr), method="POST", headers={
            "Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64",
            "Authorization": "Basic " + base64.b64encode(
                f"{device_id}:{token}".encode()).decode()})
    context = ssl.create_default_context(cafile=str(chain))
    with urllib.request.urlopen(request, context=context, timeout=30) as reply:
        assert reply.status == 200
        assert re.fullmatch(r"[0-9a-f]{16}", reply.headers["X-Request-ID"])
        [certificate] = pkcs7.load_der_pkcs7_certificates(base64.b64decode(reply.read()))
    out.mkdir(exist_ok=True)
    (out / f"{device_id}.pem").write_text(pki.certificate_pem(certificate))
    (out / f"{device_id}.key").write_bytes(pki.private_key_pem(key))
    return Credentials(name=device_id, cert=out / f"{device_id}.pem",
                       key=out / f"{device_id}.key",
                       serial=f"{certificate.serial_number:x}", ca=chain)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every stderr line, each of which must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_up_prints_metrics_and_both_services_count_real_traffic_and_log_json(
        fleet: Run, data_dir: Path, tmp_path: Path,
        started: list[subprocess.Popen[str]]) -> None:
    fleet.ok("group", "create", "sensors")
    [token] = fleet.json("token", "create", "--group", "sensors")
    fleet.ok("cert", "issue-service", "collector", "--out-dir", str(tmp_path / "svc"))
    process = start(started, ["up", "--est-port", "0", "--mqtt-port", "0",
                              "--log-format", "json"], service_env(data_dir))
    lines = read_until(process, r"^data dir: ")
    ports = {m.group(1): int(m.group(2)) for m in map(METRICS_URL.match, lines) if m}
    assert set(ports) == {"EST", "MQTT"}
    assert ports["EST"] != ports["MQTT"]
    est_port = int(next(x for x in lines if x.startswith("EST listening")).split(":")[-1]
                   .split("/")[0])
    mqtt_port = int(next(x for x in lines if x.startswith("MQTT listening")).split(":")[-1])
    chain = data_dir / "ca" / "chain.pem"
    service_credentials = Credentials(name="collector", cert=tmp_path / "svc/collector.pem",
                                      key=tmp_path / "svc/collector.key", serial="", ca=chain)

    device_credentials = enroll_over_est(est_port, chain, token["token"], "dev-1",
                                         tmp_path / "dev")
    service = Client(mqtt_port, service_credentials)
    device = Client(mqtt_port, device_credentials)
    try:
        assert service.connect() == 0
        assert service.subscribe("devices/+/telemetry") == [1]
        assert device.connect() == 0
        device.publish("devices/dev-1/telemetry", b"21.5", qos=1)
        assert service.receive() is not None
        device.publish("devices/dev-2/telemetry", b"not mine", qos=1)  # denied
        broker = ports["MQTT"]
        assert metric(broker, "fleet_broker_connections", state="admitted") == 2
        assert metric(broker, "fleet_broker_messages_received_total") == 2
        assert metric(broker, "fleet_broker_messages_delivered_total") == 1
        assert metric(broker, "fleet_broker_acl_denials_total", action="publish") == 1
        assert metric(broker, "fleet_broker_messages_dropped_total", reason="denied") == 1
        fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
        assert device.disconnected.wait(15)
        assert wait_until(lambda: metric(
            broker, "fleet_broker_revocation_drop_seconds_count", kind="revoked") == 1, 15)
        assert 0 < metric(broker, "fleet_broker_revocation_drop_seconds_sum",
                          kind="revoked") < 15
        assert device.connect() == NOT_AUTHORIZED
        assert metric(broker, "fleet_broker_connects_refused_total", connack="0x05") == 1
        assert metric(broker, "fleet_broker_revocation_poll_age_seconds") < 10
        est = ports["EST"]
        assert metric(est, "fleet_est_enrollments_total", operation="simpleenroll",
                      outcome="issued") == 1
        assert metric(est, "fleet_est_request_seconds_count", operation="simpleenroll") == 1
        assert metric(est, "fleet_certificate_earliest_expiry_timestamp_seconds") > 0
    finally:
        device.close()
        service.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert process.stderr is not None
    stderr = process.stderr.read()
    assert token["token"] not in stderr
    logged = json_lines(stderr)
    assert all({"time", "level", "logger", "pid", "message"} <= set(line) for line in logged)
    request = next(line for line in logged if line.get("operation") == "simpleenroll")
    assert request["status"] == 200
    assert request["token_id"] == token["id"]
    assert request["path"] == "/.well-known/est/simpleenroll"
    assert {"request_id", "method", "duration_ms", "source", "issued"} <= set(request)
    outcomes = {(line["message"], line.get("identity")): line for line in logged
                if line["logger"] == "fleet.broker.gate"}
    admitted = outcomes["connection admitted", "device/dev-1"]
    closed = outcomes["connection closed", "device/dev-1"]
    refused = outcomes["connection refused", "device/dev-1"]
    assert admitted["connection_id"] == closed["connection_id"] != refused["connection_id"]
    assert closed["reason"] == "device dev-1 revoked"
    assert refused["connack"] == "0x05"
    assert refused["check"] == "registry"
    assert ("connection admitted", "service/collector") in outcomes
    assert all({"connection_id", "peer", "serial", "client_id"} <= set(line)
               for line in outcomes.values())


@pytest.mark.slow
def test_log_level_and_format_from_flags_and_environment(
        data_dir: Path, started: list[subprocess.Popen[str]]) -> None:
    quiet = start(started, ["serve", "est", "--port", "0", "--log-level", "warning"],
                  service_env(data_dir))
    chatty = start(started, ["serve", "est", "--port", "0"],
                   service_env(data_dir, FLEET_LOG_FORMAT="json", FLEET_LOG_LEVEL="debug"))
    for process in (quiet, chatty):
        ready = read_until(process, r"^metrics: ")
        port = int(ready[0].split(":")[-1].split("/")[0])
        context = ssl.create_default_context(cafile=str(data_dir / "ca" / "chain.pem"))
        with urllib.request.urlopen(f"https://localhost:{port}/.well-known/est/cacerts",
                                    context=context, timeout=30) as reply:
            assert reply.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert quiet.stderr is not None
    assert chatty.stderr is not None
    assert "cacerts" not in quiet.stderr.read()  # its INFO line is below --log-level warning
    logged = json_lines(chatty.stderr.read())
    [line] = [line for line in logged if line.get("operation") == "cacerts"]
    assert line["level"] == "INFO"
    assert line["status"] == 200


def test_bad_log_level_is_refused_naming_the_setting(fleet: Run) -> None:
    result = fleet("serve", "broker", "--port", "0", "--log-level", "loud")
    assert result.exit_code != 0
    assert "log.level" in result.stderr
    assert "debug, info, warning, error" in result.stderr
