"""`fleet serve mosquitto-kick` against the real Mosquitto binary and its dynamic security
plugin, configured by `fleet export mosquitto`: revoked and suspended devices' live sessions
are ended, `fleet crl --watch --signal` refuses the revoked one's reconnect, the kick leaves
nothing behind in the plugin, and no device can send the plugin a command."""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet.authority import Authority
from fleet.cli.app import app
from fleet.integrations import mosquitto
from fleet.integrations.mosquitto_kick import MosquittoKicker

from .conftest import Enroll
from .helpers import Client, Credentials
from .test_export_mosquitto import fleet, free_port, on_mosquitto

pytestmark = pytest.mark.slow

FLEET = str(Path(sys.executable).parent / "fleet")
StartMosquitto = Callable[[Path, int], subprocess.Popen[bytes]]


class Exported:
    """`fleet export mosquitto` into *out*, and Mosquitto started on it."""

    def __init__(self, data_dir: Path, out: Path, start: StartMosquitto) -> None:
        self.data_dir, self.out, self.port = data_dir, out, free_port()
        fleet(data_dir, "export", "mosquitto", "--out", str(out), "--port", str(self.port),
              "--user", "root")
        self._start = start
        self.process = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        self.process = self._start(self.out / "mosquitto.conf", self.port)
        return self.process

    def client(self, credentials: Credentials) -> Client:
        return Client(self.port, on_mosquitto(credentials, self.out))

    def admin(self) -> Client:
        """A client with the kick hook's certificate, listening to the plugin's answers."""
        kick = Credentials(name="mosquitto-kick", cert=self.out / "mosquitto-kick.pem",
                           key=self.out / "mosquitto-kick.key", serial="",
                           ca=self.out / "ca.pem")
        client = self.client(kick)
        assert client.connect() == 0
        assert client.subscribe(mosquitto.DYNSEC_RESPONSE_TOPIC) == [1]
        return client


@pytest.fixture
def exported(data_dir: Path, tmp_path: Path,
             started_mosquitto: StartMosquitto) -> Callable[[], Exported]:
    return lambda: Exported(data_dir, tmp_path / "mosquitto", started_mosquitto)


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """`fleet ARGS` processes, stopped (SIGTERM, exit 0) at the end of the test."""
    started: list[subprocess.Popen[str]] = []

    def run(data_dir: Path, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([FLEET, "--data-dir", str(data_dir), *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    yield run
    for process in started:
        process.terminate()
        assert process.wait(20) == 0, process.stderr.read() if process.stderr else ""


def kick_hook(run: Callable[..., subprocess.Popen[str]], site: Exported) -> None:
    process = run(site.data_dir, "serve", "mosquitto-kick", "--port", str(site.port),
                  "--cert", str(site.out / "mosquitto-kick.pem"),
                  "--key", str(site.out / "mosquitto-kick.key"),
                  "--cafile", str(site.out / "ca.pem"))
    assert process.stdout is not None
    banner = process.stdout.readline()
    assert "Mosquitto kick hook following revocations" in banner, banner


def crl_watch(run: Callable[..., subprocess.Popen[str]], site: Exported) -> None:
    process = run(site.data_dir, "crl", "--watch", "--force", "--out",
                  str(site.out / "crl.pem"), "--signal", str(site.process.pid))
    assert process.stderr is not None
    first = process.stderr.readline()
    assert f"sent SIGHUP to process {site.process.pid}" in first, first


def refused(site: Exported, device: Credentials, timeout: float = 10.0) -> bool:
    """Whether Mosquitto refuses *device*'s new connection before *timeout*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        again = site.client(device)
        code = again.connect()
        again.close()
        if code is None:
            return True
        time.sleep(0.1)
    return False


def confined(site: Exported, device: Client, service: Client, other: str) -> bool:
    """Whether *device*'s publish to its own telemetry reaches *service* and its publish
    to device *other*'s does not."""
    name = device.client_id
    device.publish(f"devices/{other}/telemetry", b"spoofed", qos=1)
    device.publish(f"devices/{name}/telemetry", b"mine", qos=1)
    message = service.receive()
    return message is not None and message.topic == f"devices/{name}/telemetry" \
        and service.receive(timeout=0.5) is None


def test_mosquitto_kick_ends_a_revoked_session_within_2s_and_the_crl_refuses_the_reconnect(
        enroll: Enroll, exported: Callable[[], Exported],
        processes: Callable[..., subprocess.Popen[str]], data_dir: Path) -> None:
    """Five devices revoked in turn with `fleet device revoke`: each live session ends
    within 2 s, its next CONNECT is refused, and the device left is neither kicked nor
    freed of the ACL file."""
    devices = [enroll(f"d{n}") for n in range(6)]
    site = exported()
    crl_watch(processes, site)
    kick_hook(processes, site)
    clients = [site.client(d) for d in devices]
    try:
        assert [c.connect() for c in clients] == [0] * len(clients)
        times = []
        for device, client in zip(devices[:5], clients[:5], strict=True):
            start = time.monotonic()
            fleet(data_dir, "device", "revoke", device.name, "--reason", "keyCompromise")
            assert client.disconnected.wait(2.0), f"{device.name} still connected after 2 s"
            times.append(time.monotonic() - start)
            assert refused(site, device), f"Mosquitto admitted revoked {device.name} again"
        print(f"revoke-to-kick ms min/median/max: {min(times) * 1000:.0f} / "
              f"{statistics.median(times) * 1000:.0f} / {max(times) * 1000:.0f}")
        assert not clients[5].disconnected.is_set()
    finally:
        for client in clients:
            client.close()


def test_mosquitto_kick_of_a_suspended_device_leaves_it_confined_after_resume(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        exported: Callable[[], Exported], processes: Callable[..., subprocess.Popen[str]],
        data_dir: Path) -> None:
    """deleteClient leaves no client in the plugin: the resumed device connects again and
    the ACL file still decides for it, and the plugin's saved state is the export's."""
    d1, _ = enroll("d1"), enroll("d2")
    ingest = issue_service("ingest")
    site = exported()
    kick_hook(processes, site)
    device, service = site.client(d1), site.client(ingest)
    try:
        assert device.connect() == 0
        assert service.connect() == 0
        assert service.subscribe("devices/+/telemetry") == [1]
        fleet(data_dir, "device", "suspend", "d1")
        assert device.disconnected.wait(2.0), "the suspended device is still connected"
        fleet(data_dir, "device", "resume", "d1")
        assert device.connect() == 0
        assert confined(site, device, service, other="d2")
        saved = json.loads((site.out / "dynamic-security.json").read_text())
        assert [c["username"] for c in saved["clients"]] == ["mosquitto-kick"]
    finally:
        device.close()
        service.close()


def test_mosquitto_kick_retries_while_mosquitto_is_down_and_kicks_once_it_is_back(
        enroll: Enroll, exported: Callable[[], Exported],
        processes: Callable[..., subprocess.Popen[str]], data_dir: Path) -> None:
    """Mosquitto stopped, d1 revoked, Mosquitto started again on the same (stale) CRL: d1
    connects again, and the hook, connecting again by itself, kicks it."""
    d1 = enroll("d1")
    site = exported()
    kick_hook(processes, site)
    site.process.terminate()
    assert site.process.wait(10) == 0
    fleet(data_dir, "device", "revoke", "d1", "--reason", "keyCompromise")
    time.sleep(1.0)  # the hook's first attempt finds Mosquitto down
    site.start()
    device = site.client(d1)
    try:
        assert device.connect() == 0  # no `fleet crl --watch`: the CRL does not list d1
        assert device.disconnected.wait(30.0), "the hook never kicked d1 after the restart"
        assert "Client d1 been disconnected by administrative action" in \
            (site.out.parent / "mosquitto.log").read_text()
    finally:
        device.close()


def test_mosquitto_kick_again_ends_a_session_made_before_the_crl_reload(
        enroll: Enroll, sqlite_authority: Authority, exported: Callable[[], Exported],
        data_dir: Path) -> None:
    """A revoked device that connects again before Mosquitto has read the new CRL is kicked
    once more, again_after seconds later; by then the CRL refuses it."""
    d1 = enroll("d1")
    site = exported()
    device = site.client(d1)

    async def scenario() -> None:
        context = ssl.create_default_context(cafile=str(site.out / "ca.pem"))
        context.load_cert_chain(str(site.out / "mosquitto-kick.pem"),
                                str(site.out / "mosquitto-kick.key"))
        hook = MosquittoKicker(authority=sqlite_authority, host="127.0.0.1", port=site.port,
                               name="mosquitto-kick", ssl_context=context,
                               poll_interval=0.05, again_after=2.0)
        await hook.start()
        try:
            assert await asyncio.to_thread(device.connect) == 0
            sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise",
                                           actor="operator")
            assert await asyncio.to_thread(device.disconnected.wait, 2.0)
            assert await asyncio.to_thread(device.connect) == 0  # the CRL is stale
            fleet(data_dir, "crl", "--force", "--out", str(site.out / "crl.pem"))
            site.process.send_signal(1)  # SIGHUP: Mosquitto reads the CRL again
            assert await asyncio.to_thread(device.disconnected.wait, 5.0), \
                "the second kick did not come"
            assert await asyncio.to_thread(refused, site, d1)
            assert hook.done == 1
            assert hook.failed == 0
        finally:
            await hook.close()

    try:
        asyncio.run(scenario())
    finally:
        device.close()


def test_mosquitto_kick_never_kicks_its_own_identity(sqlite_authority: Authority) -> None:
    """Deleting the plugin's admin would end every later kick: the hook refuses to."""
    hook = MosquittoKicker(authority=sqlite_authority, host="127.0.0.1", port=1,
                           name="mosquitto-kick", ssl_context=ssl.create_default_context())
    assert asyncio.run(hook.act("mosquitto-kick")) is False


def test_mosquitto_device_cannot_send_dynamic_security_commands(
        enroll: Enroll, exported: Callable[[], Exported]) -> None:
    """A device's createClient and deleteClient on the plugin's topic do nothing: the ACL
    file denies the publish, so its neighbour stays connected and the plugin still knows only
    the hook's client; the device hears none of the plugin's answers either."""
    d1, d2 = enroll("d1"), enroll("d2")
    site = exported()
    attacker, victim = site.client(d1), site.client(d2)
    admin = site.admin()
    try:
        assert attacker.connect() == 0
        assert victim.connect() == 0
        attacker.subscribe(mosquitto.DYNSEC_RESPONSE_TOPIC)
        commands = [{"command": "createClient", "username": "d2", "password": "x"},
                    {"command": "deleteClient", "username": "d2"},
                    {"command": "createClient", "username": "d1", "password": "x"}]
        attacker.publish(mosquitto.DYNSEC_TOPIC, json.dumps({"commands": commands}).encode(),
                         qos=1)
        admin.publish(mosquitto.DYNSEC_TOPIC, json.dumps({"commands": [
            {"command": "listClients", "correlationData": "list"}]}).encode(), qos=1)
        answer = admin.receive()
        assert answer is not None
        (listed,) = json.loads(answer.payload)["responses"]
        assert listed["correlationData"] == "list"
        assert listed["data"]["clients"] == ["mosquitto-kick"]
        assert attacker.receive(timeout=0.5) is None
        assert not victim.disconnected.is_set()
    finally:
        for client in (attacker, victim, admin):
            client.close()


def test_mosquitto_kick_identity_gets_the_plugin_topics_only(
        enroll: Enroll, exported: Callable[[], Exported]) -> None:
    """The kick hook's certificate is no telemetry service: the ACL file has no block for it
    and the plugin grants it its own topics only, so a command it publishes to a device is
    not delivered."""
    d1 = enroll("d1")
    site = exported()
    assert "user mosquitto-kick" not in (site.out / "acl").read_text().splitlines()
    device, admin = site.client(d1), site.admin()
    try:
        assert device.connect() == 0
        device.subscribe("devices/d1/commands/#")
        admin.publish("devices/d1/commands/open", b"x", qos=1)
        assert device.receive(timeout=1.0) is None
    finally:
        device.close()
        admin.close()


def test_mosquitto_kick_answers_already_exists_and_still_kicks(
        enroll: Enroll, exported: Callable[[], Exported],
        processes: Callable[..., subprocess.Popen[str]], data_dir: Path) -> None:
    """A client of the device's name left in the plugin (createClient answers "Client already
    exists"): the delete that follows still kicks the device and removes it."""
    d1 = enroll("d1")
    site = exported()
    admin = site.admin()
    admin.publish(mosquitto.DYNSEC_TOPIC, json.dumps({"commands": [
        {"command": "createClient", "username": "d1", "correlationData": "left"}]}).encode(),
        qos=1)
    answer = admin.receive()
    assert answer is not None
    assert "error" not in json.loads(answer.payload)["responses"][0]
    kick_hook(processes, site)
    device = site.client(d1)
    try:
        assert device.connect() == 0
        fleet(data_dir, "device", "revoke", "d1", "--reason", "keyCompromise")
        assert device.disconnected.wait(2.0)
        saved = json.loads((site.out / "dynamic-security.json").read_text())
        assert [c["username"] for c in saved["clients"]] == ["mosquitto-kick"]
    finally:
        device.close()
        admin.close()


def test_mosquitto_kick_refuses_a_device_certificate(enroll: Enroll, data_dir: Path) -> None:
    d1 = enroll("d1")
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "serve", "mosquitto-kick",
                                      "--cert", str(d1.cert), "--key", str(d1.key),
                                      "--cafile", str(d1.ca)])
    assert result.exit_code != 0
    assert "the kick hook needs a service certificate" in result.stderr


def test_mosquitto_kick_an_error_answer_to_the_delete_is_a_failure(
        sqlite_authority: Authority) -> None:
    """The plugin's answers as 2.0.11 words them: a delete that failed kicked nothing."""
    hook = MosquittoKicker(authority=sqlite_authority, host="127.0.0.1", port=1,
                           name="mosquitto-kick", ssl_context=ssl.create_default_context())
    failed = {"createClient": {"command": "createClient", "error": "Username not valid UTF-8"},
              "deleteClient": {"command": "deleteClient", "error": "Client not found"}}
    assert hook._read("d1", failed) is False
    assert hook._read("d1", {"createClient": {"command": "createClient"}}) is False
    existed = {"createClient": {"command": "createClient", "error": "Client already exists"},
               "deleteClient": {"command": "deleteClient"}}
    assert hook._read("d1", existed) is True
