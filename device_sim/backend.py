"""The backend service of the simulated fleet: reads telemetry and replies, sends commands.

It connects like any Fleet service, with a certificate for ``spiffe://<domain>/service/<name>``
(issued by the operator), and sends QoS 1 commands to devices that have a session at the
broker, so the run can check that none is lost while devices renew and reconnect. Device side
of the wire (a client of the broker like the devices): nothing from Fleet.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from device_sim.backoff import Backoff
from device_sim.device import payload
from device_sim.environment import Environment
from device_sim.mqtt_loop import ClosedBeforeConnack, ConnectRefused, LoopClient
from device_sim.operator import ServiceCredentials
from device_sim.tls import client_context

COMMAND_TICK = 0.2
SUBSCRIPTIONS = ("devices/+/telemetry", "devices/+/events/#")


@dataclass(frozen=True, slots=True)
class Command:
    device_id: str
    seq: int
    published_at: float
    acked_at: float | None = None


class Backend:
    """One service client that observes the whole fleet and commands it."""

    def __init__(self, env: Environment, credentials: ServiceCredentials) -> None:
        self.env = env
        self.name = credentials.name
        self.credentials = credentials
        self.client = LoopClient(credentials.name, clean_session=False)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.backoff = Backoff(initial=env.scenario.backoff_initial,
                               maximum=env.scenario.backoff_max, rng=env.rng)
        self.ready: dict[str, None] = {}
        self._targets: list[str] = []
        self._seq: dict[str, int] = {}
        self._in_flight: dict[int, Command] = {}
        self.commands: list[Command] = []
        self.online = asyncio.Event()
        self.sending = True
        self._session_epoch = -1
        self._budget = 0.0

    # -- which devices may be commanded -------------------------------------------------------

    def session_ready(self, device_id: str) -> None:
        """A device subscribed in the broker's current life: commands to it must arrive."""
        if device_id not in self.ready:
            self.ready[device_id] = None
            self._targets.append(device_id)

    def forget(self, device_id: str) -> None:
        """Stop commanding a device (it is being revoked)."""
        if self.ready.pop(device_id, 0) is None:
            self._targets.remove(device_id)

    def broker_restarting(self) -> None:
        """The broker keeps sessions in memory only: every device must subscribe again."""
        self.ready.clear()
        self._targets.clear()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        env = self.env
        anchors, _ = await env.trust()
        context = client_context(anchors, self.credentials.certificate,
                                 self.credentials.key_pem)
        env.mqtt.attach(self.client)
        ticker = asyncio.create_task(self._send_commands())
        try:
            while not env.stopping:
                if not await self._connect(context):
                    return
                closed = self.client.closed
                assert closed is not None
                await asyncio.wait((closed, env.stop), return_when=asyncio.FIRST_COMPLETED)
                self.online.clear()
                if env.stopping:
                    return
                if not env.in_restart_window(env.now()):
                    env.metrics.error(env.now(), "backend-disconnected", None,
                                      closed.result().reason)
        finally:
            ticker.cancel()

    async def _connect(self, context: Any) -> bool:
        env = self.env
        first = True
        while not env.stopping:
            if not first and not await env.sleep(self.backoff.next_delay()):
                return False
            first = False
            try:
                present = await env.mqtt.connect(
                    self.client, host=env.endpoints.mqtt_host, port=env.endpoints.mqtt_port,
                    context=context, keepalive=env.scenario.keepalive,
                    timeout=env.scenario.connect_timeout)
            except (ConnectRefused, ClosedBeforeConnack) as exc:
                env.metrics.error(env.now(), "backend-refused", None, str(exc))
                return False
            except (OSError, TimeoutError):
                continue
            self.backoff.reset()
            if not present or self._session_epoch != env.restart_count:
                for topic in SUBSCRIPTIONS:
                    self.client.subscribe(topic, qos=1)
                self._session_epoch = env.restart_count
            self.online.set()
            return True
        return False

    async def _send_commands(self) -> None:
        env = self.env
        interval = env.scenario.command_interval
        if interval <= 0:
            return
        while not env.stopping:
            await asyncio.sleep(COMMAND_TICK)
            if not self.sending or not self.online.is_set() or not self._targets:
                self._budget = 0.0
                continue
            self._budget += len(self._targets) * COMMAND_TICK / interval
            while self._budget >= 1:
                self._budget -= 1
                self._command(env.rng.choice(self._targets))

    def _command(self, device_id: str) -> None:
        seq = self._seq.get(device_id, 0) + 1
        self._seq[device_id] = seq
        body = payload({"seq": seq, "by": self.name}, 48)
        info = self.client.publish(f"devices/{device_id}/commands/ping", body, qos=1)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._in_flight[info.mid] = Command(device_id, seq, self.env.now())

    @property
    def unconfirmed(self) -> int:
        return len(self._in_flight)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any,
                    _properties: Any) -> None:
        command = self._in_flight.pop(mid, None)
        if command is None:
            return
        t = self.env.now()
        self.commands.append(Command(command.device_id, command.seq, command.published_at, t))
        self.env.metrics.event("commands_sent", t)

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        env = self.env
        t = env.now()
        try:
            body = json.loads(message.payload)
        except ValueError:
            body = {}
        if isinstance(body, dict) and "spoofed_by" in body:
            env.sighting(str(body["spoofed_by"]), f"{message.topic} delivered to {self.name}")
            return
        if message.topic.endswith("/telemetry"):
            env.metrics.event("telemetry_received", t)
        elif message.topic.endswith("/events/reply"):
            env.metrics.event("replies_received", t)
        else:
            env.metrics.count("backend_other_received")

    async def close(self) -> None:
        await self.env.mqtt.close(self.client)
