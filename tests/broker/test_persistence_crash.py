"""kill -9: the broker as a real process (``fleet serve broker``) is killed without a chance to
save; started again, it has what it saved at its last interval (fleet.broker.persistence)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli.helpers import FLEET_SCRIPT, read_until, service_env

from fleet.authority import Authority

from .conftest import Enroll
from .helpers import Client, Credentials, wait_until

INTERVAL = "300ms"
NOT_AUTHORIZED = 5


class BrokerProcess:
    """``fleet serve broker`` on a free port with its own data dir."""

    def __init__(self, data_dir: Path) -> None:
        env = service_env(data_dir, FLEET_BROKER_PERSISTENCE_INTERVAL=INTERVAL)
        self.process = subprocess.Popen([str(FLEET_SCRIPT), "serve", "broker", "--port", "0"],
                                        env=env, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        [line] = read_until(self.process, r"^MQTT listening on ")
        found = re.fullmatch(r"MQTT listening on mqtts://127\.0\.0\.1:(\d+)", line)
        assert found is not None, line
        self.port = int(found.group(1))

    def kill(self) -> None:
        """SIGKILL, by its pid."""
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def processes() -> Iterator[list[BrokerProcess]]:
    started: list[BrokerProcess] = []
    yield started
    for broker in started:
        if broker.process.poll() is None:
            broker.kill()


def command_topic(credentials: Credentials) -> str:
    return f"devices/{credentials.name}/commands/open"


def saved_queues(path: Path) -> dict[str, int]:
    """Messages queued per client id in the state file as last written."""
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {s["client_id"]: len(s["queued"]) for s in state["sessions"]}


@pytest.mark.slow
def test_kill_9_loses_at_most_one_interval_and_keeps_revoked_devices_out(
        data_dir: Path, enroll: Enroll, issue_service: Callable[[str], Credentials],
        sqlite_authority: Authority, processes: list[BrokerProcess]) -> None:
    away, connected, revoked = enroll("d1"), enroll("d2"), enroll("d3")
    control = issue_service("control")
    broker = BrokerProcess(data_dir)
    processes.append(broker)
    clients: list[Client] = []

    def connect(credentials: Credentials, port: int, **options: object) -> Client:
        client = Client(port, credentials, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    try:
        for credentials in (away, connected, revoked):
            device = connect(credentials, broker.port, clean_session=False)
            assert device.connect() == 0
            assert device.subscribe(f"devices/{credentials.name}/commands/#", qos=1) == [1]
            if credentials is revoked:
                device.publish("devices/d3/state", b"d3 on", qos=1, retain=True)
            if credentials is not connected:
                device.close()
        sender = connect(control, broker.port)
        assert sender.connect() == 0
        for credentials in (away, revoked):
            for payload in (b"1", b"2"):
                sender.publish(command_topic(credentials), payload, qos=1)
        path = data_dir / "broker" / "state.json"
        assert wait_until(lambda: saved_queues(path) == {"d1": 2, "d2": 0, "d3": 2})
        broker.kill()
        for client in clients:
            client.close()
        sqlite_authority.revoke_device(device_id="d3", reason="keyCompromise",
                                       actor="operator")

        again = BrokerProcess(data_dir)
        processes.append(again)
        device = connect(away, again.port, clean_session=False)
        assert device.connect() == 0
        assert device.session_present is True
        received = [device.receive(), device.receive()]
        assert [m.payload for m in received if m is not None] == [b"1", b"2"]
        live = connect(connected, again.port, clean_session=False)
        assert live.connect() == 0
        assert live.session_present is True
        sender = connect(control, again.port)
        assert sender.connect() == 0
        sender.publish(command_topic(connected), b"after", qos=1)
        message = live.receive()
        assert message is not None
        assert message.payload == b"after"
        assert connect(revoked, again.port, clean_session=False).connect() == NOT_AUTHORIZED
        assert sender.subscribe("devices/+/state", qos=1) == [1]
        assert sender.receive(timeout=1.0) is None  # d3's retained message is gone
    finally:
        for client in clients:
            client.close()
