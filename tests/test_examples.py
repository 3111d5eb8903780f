"""examples/device_client.py against a real ``fleet up``: it enrolls with a token, publishes,
renews over mutual TLS before its short-lived certificate expires and keeps publishing with the
new one; refusals are retried with backoff, and a Retry-After is waited out."""

from __future__ import annotations

import json
import queue
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import paho.mqtt.client as mqtt
import pytest
from cli.helpers import FLEET_SCRIPT, PROJECT, read_until, service_env
from paho.mqtt.enums import CallbackAPIVersion

from fleet.files import write_private

pytestmark = pytest.mark.slow

EXAMPLE = PROJECT / "examples" / "device_client.py"
DEVICE = "sensor-7"
LIFETIME = "6s"
WAIT = 60.0


class Fleet:
    """``fleet up`` on free ports with short device certificates, and the CLI on its data dir."""

    def __init__(self, data_dir: Path, **extra: str) -> None:
        self.data_dir = data_dir
        self.env = service_env(data_dir, FLEET_CERTIFICATES_DEVICE_LIFETIME=LIFETIME, **extra)
        self.process = subprocess.Popen([str(FLEET_SCRIPT), "up", "--est-port", "0",
                                         "--mqtt-port", "0"], env=self.env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lines = "\n".join(read_until(self.process, r"^data dir: ", timeout=WAIT))
        est = re.search(r"EST listening on (https://127\.0\.0\.1:\d+)/", lines)
        broker = re.search(r"MQTT listening on mqtts://(127\.0\.0\.1:\d+)$", lines, re.M)
        assert est is not None, lines
        assert broker is not None, lines
        self.est, self.broker = est.group(1), broker.group(1)
        self.chain = data_dir / "ca" / "chain.pem"

    def __call__(self, *args: str) -> str:
        done = subprocess.run([str(FLEET_SCRIPT), *args], env=self.env, capture_output=True,
                              text=True, timeout=WAIT, check=False)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def token_file(self, directory: Path) -> Path:
        """A token minted for the device, written as the factory flashes it."""
        self("group", "create", "sensors")
        (minted,) = json.loads(self("token", "create", "--group", "sensors", "--device",
                                    DEVICE, "--json"))
        path = directory / "token"
        write_private(path, minted["token"].encode())
        return path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(tmp_path / "fleet-data", FLEET_EST_AUTH_FAILURES_PER_MINUTE="2")
    yield running
    running.stop()


@pytest.fixture
def start_device(fleet: Fleet, tmp_path: Path) -> Iterator[Callable[..., Popen[str]]]:
    """Run the example as a device would (each one killed at the end if still running)."""
    started: list[Popen[str]] = []

    def start(token: Path, *options: str) -> Popen[str]:
        device = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--est", fleet.est, "--mqtt", fleet.broker,
             "--ca", str(fleet.chain), "--device-id", DEVICE, "--token-file", str(token),
             "--state-dir", str(tmp_path / "device"), "--interval", "0.2",
             "--renewal-fraction", "0.5", *options],
            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(device)
        return device

    yield start
    for device in started:
        if device.poll() is None:
            device.kill()
            device.wait(10)


class Backend:
    """A service subscribed to every device's telemetry, as a backend consumer is."""

    def __init__(self, fleet: Fleet, directory: Path) -> None:
        fleet("cert", "issue-service", "ingest", "--out-dir", str(directory))
        context = ssl.create_default_context(cafile=str(fleet.chain))
        context.load_cert_chain(directory / "ingest.pem", directory / "ingest.key")
        self.messages: queue.Queue[dict[str, object]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ingest",
                                  protocol=mqtt.MQTTv311)
        self.client.tls_set_context(context)
        self.client.on_connect = lambda c, u, f, code, p: c.subscribe("devices/+/telemetry", 1)
        self.client.on_message = lambda c, u, m: self.messages.put(json.loads(m.payload))
        host, _, port = fleet.broker.rpartition(":")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def serials(self, count: int) -> list[str]:
        """The certificates telemetry names, in order, once *count* did and one more message
        arrived after that."""
        serials: list[str] = []
        while len(serials) < count:
            serial = str(self.messages.get(timeout=WAIT)["serial"])
            if serial not in serials:
                serials.append(serial)
        self.messages.get(timeout=WAIT)
        return serials

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def backend(fleet: Fleet, tmp_path: Path) -> Iterator[Backend]:
    subscribed = Backend(fleet, tmp_path / "ingest")
    yield subscribed
    subscribed.close()


def test_device_client_enrolls_publishes_renews_and_keeps_publishing(
        fleet: Fleet, backend: Backend, start_device: Callable[..., Popen[str]],
        tmp_path: Path) -> None:
    device = start_device(fleet.token_file(tmp_path))
    (enrolled,) = re.findall(r"enrolled: certificate ([0-9a-f]+)",
                             read_until(device, r"enrolled: certificate", timeout=WAIT)[-1])
    serials = backend.serials(3)  # renewed twice, publishing all along
    assert serials[0] == enrolled
    # A command on the persistent session reaches the device on its renewed connection.
    backend.client.publish(f"devices/{DEVICE}/commands/reboot", b"now", qos=1)
    read_until(device, rf"command on devices/{DEVICE}/commands/reboot: b'now'", timeout=WAIT)
    shown = json.loads(fleet("device", "show", DEVICE, "--json"))
    assert set(serials) <= {c["serial"] for c in shown["certificates"]}
    assert (tmp_path / "device" / "identity.pem").stat().st_mode & 0o777 == 0o600
    # Revoked: refused by the broker or by EST, retried with backoff, until the certificate
    # expires and the device says it needs a new token.
    fleet("device", "revoke", DEVICE, "--reason", "keyCompromise")
    read_until(device, r"(broker refused the connection: Not authorized|"
                       r"simplereenroll refused: 403).*; retrying in", timeout=WAIT)
    read_until(device, r"expired: a new bootstrap token is needed", timeout=WAIT)
    assert device.wait(WAIT) == 2


def test_device_client_backs_off_on_a_refused_token_and_honours_retry_after(
        fleet: Fleet, start_device: Callable[..., Popen[str]], tmp_path: Path) -> None:
    token = fleet.token_file(tmp_path)
    write_private(token, b"not-the-token")
    device = start_device(token, "--backoff-initial", "0.2", "--backoff-max", "0.5")
    refused = read_until(device, r"Retry-After", timeout=WAIT)
    # Two failures a minute allowed (FLEET_EST_AUTH_FAILURES_PER_MINUTE): 401 twice, each
    # retried within --backoff-max, then 429 and a wait far longer than any backoff.
    backoffs = [line for line in refused if "simpleenroll refused: 401" in line]
    assert len(backoffs) == 2, refused
    assert all(float(re.findall(r"retrying in ([\d.]+)s$", line)[0]) <= 0.5
               for line in backoffs)
    (waited,) = re.findall(r"simpleenroll refused: 429 .*; retrying in ([\d.]+)s "
                           r"\(Retry-After\)$", refused[-1])
    assert 30 < float(waited) <= 60
    device.send_signal(signal.SIGTERM)  # a clean stop, also in the middle of a wait
    rest, _ = device.communicate(timeout=WAIT)
    assert device.returncode == 0
    assert rest.rstrip().endswith("stopped")
    assert not (tmp_path / "device" / "identity.pem").exists()
