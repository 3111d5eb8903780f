"""End to end with real processes: `fleet up`, devices enrolled with curl + openssl over EST,
the mosquitto_sub / mosquitto_pub command-line clients, and `fleet device revoke` run in
another process while mosquitto_sub is connected."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from conftest import TEST_PASSPHRASE
from sqlalchemy.engine import Engine

from fleet.registry import make_engine

from .helpers import audit_events

pytestmark = pytest.mark.slow

FLEET = str(Path(sys.executable).parent / "fleet")


@dataclass
class Stack:
    est: str
    mqtt_port: int
    chain: Path
    env: dict[str, str]
    work: Path

    def fleet(self, *args: str) -> str:
        done = subprocess.run([FLEET, *args], env=self.env, capture_output=True, text=True,
                              timeout=60, check=True)
        return done.stdout

    def mosquitto(self, program: str, name: str, *args: str,
                  client_id: str | None = None) -> list[str]:
        return [program, "-h", "127.0.0.1", "-p", str(self.mqtt_port), "--cafile",
                str(self.chain), "--cert", str(self.work / f"{name}.pem"), "--key",
                str(self.work / f"{name}.key"), "-i", client_id or name, "-V", "mqttv311",
                *args]

    def enroll(self, device_id: str, group: str = "g1") -> None:
        """EST simpleenroll the way an operator does it by hand: openssl and curl."""
        if group not in {g["name"] for g in json.loads(self.fleet("group", "list", "--json"))}:
            self.fleet("group", "create", group)
        token = json.loads(self.fleet("token", "create", "--group", group, "--json"))[0]["token"]
        key, csr = self.work / f"{device_id}.key", self.work / f"{device_id}.csr.der"
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-subj",
                        f"/CN={device_id}", "-outform", "DER", "-out", str(csr)],
                       check=True, capture_output=True, timeout=30)
        response = subprocess.run(
            ["curl", "-sS", "--fail", "--cacert", str(self.chain), "-u", f"{device_id}:{token}",
             "-H", "Content-Type: application/pkcs10", "--data-binary", "@-",
             f"{self.est}/simpleenroll"],
            input=base64.encodebytes(csr.read_bytes()), check=True, capture_output=True,
            timeout=30)
        subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-print_certs", "-out",
                        str(self.work / f"{device_id}.pem")],
                       input=base64.b64decode(b"".join(response.stdout.split())), check=True,
                       capture_output=True, timeout=30)


class Lines:
    """A process whose output lines are read in the background."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in {self.seen}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(scope="module")
def data_dir(ca_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir (and one running stack) for the whole module."""
    target = tmp_path_factory.mktemp("e2e") / "fleet-data"
    shutil.copytree(ca_template, target)
    return target


@pytest.fixture(scope="module")
def stack(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("e2e-clients")
    env = {**os.environ, "FLEET_DATA_DIR": str(data_dir), "FLEET_EST_METRICS_PORT": "0",
           "FLEET_BROKER_METRICS_PORT": "0",
           "FLEET_CA_PASSPHRASE": TEST_PASSPHRASE}
    up = Lines([FLEET, "up", "--est-port", "0", "--mqtt-port", "0"], env=env)
    try:
        est = up.wait_for(r"EST listening on ", 60).split()[-1]
        mqtt_port = int(up.wait_for(r"MQTT listening on ", 60).rsplit(":", 1)[1])
        yield Stack(est=est, mqtt_port=mqtt_port, chain=data_dir / "ca" / "chain.pem",
                    env=env, work=tmp_path)
    finally:
        up.stop()


@pytest.fixture(scope="module")
def registry(data_dir: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{data_dir / 'fleet.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def enrolled(stack: Stack) -> Stack:
    """d1, d2 and d3 enrolled over EST with curl + openssl; an `ingest` service certificate."""
    for device_id in ("d1", "d2", "d3"):
        stack.enroll(device_id)
    stack.fleet("cert", "issue-service", "ingest", "--out-dir", str(stack.work))
    return stack


def subscriber(stack: Stack, name: str, topic_filter: str, *extra: str) -> Lines:
    # stdbuf: mosquitto_sub block-buffers stdout into a pipe
    return Lines(["stdbuf", "-oL", *stack.mosquitto("mosquitto_sub", name, "-d", "-v", "-q", "1",
                                                    "-t", topic_filter, *extra)])


def publish(stack: Stack, name: str, topic: str, message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(stack.mosquitto("mosquitto_pub", name, "-q", "1", "-t", topic,
                                          "-m", message),
                          capture_output=True, text=True, timeout=30)


def test_e2e_allowed_publish_and_subscribe(enrolled: Stack) -> None:
    sub = subscriber(enrolled, "ingest", "devices/+/telemetry")
    try:
        sub.wait_for(r"Subscribed \(mid: \d+\): 1")
        assert publish(enrolled, "d1", "devices/d1/telemetry", "21.5").returncode == 0
        assert sub.wait_for(r"^devices/") == "devices/d1/telemetry 21.5"
    finally:
        sub.stop()


def test_e2e_cross_device_publish_not_delivered(enrolled: Stack) -> None:
    sub = subscriber(enrolled, "d1", "devices/d1/commands/#")
    try:
        sub.wait_for(r"Subscribed \(mid: \d+\): 1")
        assert publish(enrolled, "d2", "devices/d1/commands/unlock", "forged").returncode == 0
        assert publish(enrolled, "ingest", "devices/d1/commands/reboot", "now").returncode == 0
        assert sub.wait_for(r"^devices/") == "devices/d1/commands/reboot now"
    finally:
        sub.stop()


def test_e2e_forbidden_subscribe_denied(enrolled: Stack) -> None:
    denied = subprocess.run(
        enrolled.mosquitto("mosquitto_sub", "d2", "-t", "devices/+/commands/#", "-C", "1",
                           "-W", "5"), capture_output=True, text=True, timeout=30)
    assert "All subscription requests were denied" in denied.stdout + denied.stderr


def test_e2e_client_id_spoofing_refused(enrolled: Stack) -> None:
    spoof = subprocess.run(
        enrolled.mosquitto("mosquitto_sub", "d2", "-t", "devices/d1/commands/#", "-C", "1",
                           "-W", "5", client_id="d1"), capture_output=True, text=True,
        timeout=30)
    assert spoof.returncode != 0
    assert "identifier rejected" in spoof.stdout + spoof.stderr


def test_e2e_revoke_drops_connected_mosquitto_sub_within_one_second(
        enrolled: Stack, registry: Engine) -> None:
    sub = subscriber(enrolled, "d3", "devices/d3/commands/#")
    try:
        sub.wait_for(r"Subscribed \(mid: \d+\): 1")
        enrolled.fleet("device", "revoke", "d3", "--reason", "keyCompromise")
        sub.process.wait(5)  # mosquitto_sub exits when the broker drops it
        dropped_at = datetime.now().astimezone()
        sub.wait_for(r"connection was lost")
    finally:
        sub.stop()
    revoked_at = next(e.at for e in audit_events(registry, "device.revoke"))
    kicked = [e for e in audit_events(registry, "broker.disconnect")
              if e.device_id == "d3" and "revoked" in (e.reason or "")]
    assert kicked, "the broker did not record dropping d3"
    assert (kicked[0].at - revoked_at).total_seconds() < 1.0
    assert (dropped_at - revoked_at).total_seconds() < 1.5  # includes process exit
    again = subprocess.run(
        enrolled.mosquitto("mosquitto_sub", "d3", "-t", "devices/d3/commands/#", "-C", "1",
                           "-W", "5"), capture_output=True, text=True, timeout=30)
    assert "not authorised" in again.stdout + again.stderr
