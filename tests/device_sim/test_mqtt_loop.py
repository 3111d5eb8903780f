"""Many paho clients on one asyncio loop: against Fleet's broker and a stock Mosquitto."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from device_sim.crypto import build_csr, generate_key, private_key_pem
from device_sim.device import Outcome, classify
from device_sim.misbehave import foreign_credentials
from device_sim.mqtt_loop import ConnectRefused, LoopClient, MqttLoop
from device_sim.tls import client_context
from fleet.authority import Authority, TokenCredential
from fleet.ca import CA, Paths
from fleet.settings import Settings

from .conftest import Fleet

RunFleet = Callable[[], AsyncIterator[Fleet]]
TIMEOUT = 10.0


def device_context(authority: Authority, device_id: str) -> Any:
    """Enroll *device_id* through the authority; a TLS context presenting its certificate."""
    authority.ensure_group(name="sim", actor="operator:test")
    token = authority.create_tokens(group="sim", actor="factory:test")[0].token
    key = generate_key("p256")
    issued = authority.enroll(credential=TokenCredential(str(token)),
                              csr=build_csr(device_id, key), actor="factory:test")
    ca = authority.ca
    return client_context([ca.root, ca.issuing], issued.certificate, private_key_pem(key))


def service_context(authority: Authority, name: str) -> Any:
    key = generate_key("p256")
    issued = authority.issue_service_certificate(name=name, public_key=key.public_key(),
                                                 actor="operator:test")
    ca = authority.ca
    return client_context([ca.root, ca.issuing], issued.certificate, private_key_pem(key))


def foreign_context(ca: CA, device_id: str, trust_domain: str) -> Any:
    """A certificate naming *device_id*, issued by a CA nobody trusts."""
    return foreign_credentials(device_id, trust_domain=trust_domain,
                               anchors=[ca.root, ca.issuing], received_at=0.0).context


def test_many_devices_share_one_loop(run_fleet: RunFleet) -> None:
    count = 60

    async def scenario() -> None:
        async with run_fleet() as fleet:
            contexts = [device_context(fleet.authority, f"loop-{i:03d}") for i in range(count)]
            backend_context = service_context(fleet.authority, "loop-backend")
            loop = MqttLoop(misc_interval=0.5)
            loop.start()
            received: dict[str, list[bytes]] = {}
            subscribed = asyncio.Event()
            clients = []

            def on_message(client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
                received.setdefault(message.topic.split("/")[1], []).append(message.payload)

            def on_subscribe(*_args: Any) -> None:
                if sum(1 for c in clients if c.is_open) == count:
                    subscribed.set()

            async def connect(i: int) -> LoopClient:
                client = LoopClient(f"loop-{i:03d}")
                client.on_message = on_message
                loop.attach(client)
                present = await loop.connect(client, host="127.0.0.1",
                                             port=fleet.endpoints.mqtt_port,
                                             context=contexts[i], keepalive=30, timeout=TIMEOUT)
                assert present is False  # a new persistent session
                return client

            clients.extend(await asyncio.gather(*(connect(i) for i in range(count))))
            acks = 0
            for client in clients:
                client.on_subscribe = on_subscribe
                client.subscribe(f"devices/{client.client_id}/commands/#", qos=1)
            await asyncio.wait_for(subscribed.wait(), TIMEOUT)
            await asyncio.sleep(0.2)
            backend = LoopClient("loop-backend")
            loop.attach(backend)
            await loop.connect(backend, host="127.0.0.1", port=fleet.endpoints.mqtt_port,
                               context=backend_context, keepalive=30, timeout=TIMEOUT)
            for client in clients:
                backend.publish(f"devices/{client.client_id}/commands/ping", b"hello", qos=1)
            deadline = time.monotonic() + TIMEOUT
            while sum(len(v) for v in received.values()) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            acks = sum(len(v) for v in received.values())
            assert acks == count
            assert all(c._thread is None for c in clients)  # no paho network thread anywhere
            for client in [*clients, backend]:
                client.close_gracefully()
            await asyncio.sleep(0.2)
            assert not any(c.is_open for c in clients)
            loop.stop()

    asyncio.run(scenario())


def test_connect_refused_spoofed_client_id(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet:
            context = device_context(fleet.authority, "honest-device")
            loop = MqttLoop()
            loop.start()
            spoof = LoopClient("somebody-else")
            loop.attach(spoof)
            with pytest.raises(ConnectRefused) as refused:
                await loop.connect(spoof, host="127.0.0.1", port=fleet.endpoints.mqtt_port,
                                   context=context, keepalive=30, timeout=TIMEOUT)
            assert classify(refused.value).outcome is Outcome.REFUSED
            loop.stop()

    asyncio.run(scenario())


def test_handshake_refused_foreign_ca_fleet_broker(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet:
            device_context(fleet.authority, "victim")
            forged = foreign_context(fleet.authority.ca, "victim", fleet.settings.trust_domain)
            loop = MqttLoop()
            loop.start()
            client = LoopClient("victim")
            loop.attach(client)
            with pytest.raises(Exception) as failure:  # noqa: PT011 - classified below
                await loop.connect(client, host="127.0.0.1", port=fleet.endpoints.mqtt_port,
                                   context=forged, keepalive=30, timeout=TIMEOUT)
            # Python's TLS server does not flush the alert: the client sees a bare close.
            assert classify(failure.value).outcome in (Outcome.REFUSED, Outcome.CLOSED)
            loop.stop()

    asyncio.run(scenario())


# -- the same client code against a stock Mosquitto (require_certificate) ----------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mosquitto(settings: Settings, tmp_path: Path) -> Iterator[int]:
    if shutil.which("mosquitto") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is required under CI")
        pytest.skip("mosquitto is not installed")
    paths = Paths.of(settings)
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", f"cafile {paths.chain}",
             f"certfile {paths.server_cert}", f"keyfile {paths.server_key}",
             "require_certificate true", "use_identity_as_username true",
             "allow_anonymous true", "log_type error", "persistence false"]
    if os.getuid() == 0:
        lines.append("user root")  # read the test's private files
    config.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"mosquitto did not start: {process.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_handshake_refused_foreign_ca_with_tls_alert(mosquitto: int, ca: CA,
                                                     settings: Settings) -> None:
    """OpenSSL servers send the alert: the refusal is explicit, not a bare close."""

    async def scenario() -> None:
        loop = MqttLoop()
        loop.start()
        client = LoopClient("victim")
        loop.attach(client)
        forged = foreign_context(ca, "victim", settings.trust_domain)
        with pytest.raises(Exception) as failure:  # noqa: PT011 - classified below
            await loop.connect(client, host="127.0.0.1", port=mosquitto, context=forged,
                               keepalive=30, timeout=TIMEOUT)
        attempt = classify(failure.value)
        assert attempt.outcome is Outcome.REFUSED
        assert "TLS" in attempt.detail
        loop.stop()

    asyncio.run(scenario())


def test_queued_qos1_messages_survive_a_reconnect(mosquitto: int, sqlite_authority: Authority,
                                                  ) -> None:
    """A persistent session: QoS 1 messages sent while the device was away arrive after."""

    async def scenario() -> None:
        device = device_context(sqlite_authority, "persist-1")
        sender = device_context(sqlite_authority, "persist-2")
        loop = MqttLoop()
        loop.start()
        got: list[bytes] = []
        client = LoopClient("persist-1")
        client.on_message = lambda _c, _u, m: got.append(m.payload)
        other = LoopClient("persist-2")
        for c in (client, other):
            loop.attach(c)
        kwargs = {"host": "127.0.0.1", "port": mosquitto, "keepalive": 30, "timeout": TIMEOUT}
        await loop.connect(client, context=device, **kwargs)  # type: ignore[arg-type]
        client.subscribe("devices/persist-1/commands/#", qos=1)
        await asyncio.sleep(0.2)
        closed = client.closed
        client.close_gracefully()
        assert closed is not None
        await asyncio.wait_for(closed, TIMEOUT)
        await loop.connect(other, context=sender, **kwargs)  # type: ignore[arg-type]
        for i in range(5):
            other.publish("devices/persist-1/commands/x", f"m{i}".encode(), qos=1)
        await asyncio.sleep(0.3)
        present = await loop.connect(client, context=device, **kwargs)  # type: ignore[arg-type]
        assert present is True
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sorted(got) == [f"m{i}".encode() for i in range(5)]
        loop.stop()

    asyncio.run(scenario())
