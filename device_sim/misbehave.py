"""Devices that misbehave on purpose; Fleet must refuse every attempt.

Each misbehaving device makes one or more *probes*. A probe is refused when the handshake
fails, the CONNACK refuses, the SUBACK refuses, or (for a publication, which MQTT 3.1.1 cannot
refuse explicitly) when the message never reaches anyone by the end of the run. Device side:
what they forge, they forge with ``cryptography`` (:mod:`device_sim.crypto`), not with Fleet.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import MQTTErrorCode

from device_sim.credentials import Credentials
from device_sim.crypto import client_certificate, device_uri, self_signed_ca
from device_sim.device import Attempt, Device, Phase
from device_sim.environment import Environment
from device_sim.est_client import ESTError, ESTHandshakeRefused, ESTRefused
from device_sim.manufacturer import Idevid
from device_sim.mqtt_loop import LoopClient
from device_sim.scenario import Misbehavior

SUBACK_TIMEOUT = 5.0
VICTIM_WAIT = 30.0
FOREIGN_LIFETIME = timedelta(days=1)


@dataclass(slots=True)
class Probe:
    """One thing a misbehaving device tried. ``refused`` is None until it can be judged."""

    action: str
    refused: bool | None
    detail: str = ""


def foreign_credentials(device_id: str, *, trust_domain: str,
                        anchors: Sequence[x509.Certificate], received_at: float) -> Credentials:
    """A certificate shaped like *device_id*'s own, from a root CA Fleet never trusted, in a
    context that verifies servers against *anchors*."""
    root_key, root = self_signed_ca("Foreign Root CA", lifetime=FOREIGN_LIFETIME)
    key, leaf = client_certificate(device_id, uri=device_uri(trust_domain, device_id),
                                   issuer_key=root_key, issuer=root, lifetime=FOREIGN_LIFETIME)
    return Credentials.issued(key, leaf, anchors=anchors, received_at=received_at)


class MisbehavingDevice(Device):
    """A device that tries one :class:`Misbehavior`."""

    def __init__(self, device_id: str, env: Environment, *, token: str | None,
                 kind: Misbehavior, idevid: Idevid | None = None) -> None:
        super().__init__(device_id, env, token=token, idevid=idevid)
        self.kind = kind
        self.probes: list[Probe] = []
        self.skipped: str | None = None
        self._subacks: dict[int, asyncio.Future[list[Any]]] = {}

    async def run(self) -> None:
        env = self.env
        behaviours = {
            Misbehavior.FOREIGN_TOPIC: self._foreign_topic,
            Misbehavior.SPOOF_CLIENT_ID: self._spoof_client_id,
            Misbehavior.EXPIRED_CERTIFICATE: self._expired_certificate,
            Misbehavior.FOREIGN_CA: self._foreign_ca,
        }
        try:
            await behaviours[self.kind]()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a defect in the simulation itself
            self.fail("simulator-error", f"{self.kind}: {type(exc).__name__}: {exc}")
        finally:
            self._offline(env.now())
            if self.phase is not Phase.FAILED:
                self.phase = Phase.STOPPED
            if self.client.is_open:
                self.client.close_gracefully()

    def probe(self, action: str, refused: bool | None, detail: str = "") -> None:
        self.probes.append(Probe(action, refused, detail))
        if refused is False:
            self.env.metrics.error(self.env.now(), "misbehaving-admitted", self.id,
                                   f"{self.kind}: {action}: {detail}")

    def probe_connect(self, action: str, attempt: Attempt) -> None:
        self.probe(action, not attempt.admitted,
                   attempt.detail or ("admitted" if attempt.admitted else attempt.outcome))

    async def victim(self) -> str | None:
        """A well-behaved device that is online right now."""
        env = self.env
        deadline = env.now() + VICTIM_WAIT
        while env.now() < deadline:
            candidates = sorted(env.online & env.well_behaved)
            if candidates:
                return env.rng.choice(candidates)
            if not await env.sleep(0.5):
                return None
        self.skipped = "no well-behaved device was online to target"
        return None

    # -- the behaviours ---------------------------------------------------------------------

    async def _foreign_topic(self) -> None:
        """Connect as itself, then publish to and subscribe on another device's topics."""
        if not await self.enroll() or self.credentials is None:
            return
        victim = await self.victim()
        if victim is None:
            return
        attempt = await self.attempt(self.credentials.context)
        if not attempt.admitted:
            self.fail("connect-refused", f"a device connecting as itself: {attempt.detail}")
            return
        marker = {"spoofed_by": self.id}
        for topic in (f"devices/{victim}/telemetry", f"devices/{victim}/commands/reboot"):
            self.client.publish(topic, json.dumps(marker).encode(), qos=1)
            self.probe(f"publish {topic}", None)  # judged by whether anyone receives it
        for pattern in ("devices/+/telemetry", f"devices/{victim}/commands/#", "#"):
            granted = await self._subscribe(pattern)
            self.probe(f"subscribe {pattern}", not granted,
                       "SUBACK granted" if granted else "SUBACK refused or disconnected")
        await self.env.sleep(2.0)

    async def _subscribe(self, pattern: str) -> bool:
        if not self.client.is_open:
            return False
        result, mid = self.client.subscribe(pattern, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return False
        waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = waiter
        closed = self.client.closed
        waiters: tuple[asyncio.Future[Any], ...] = (waiter,) if closed is None else (waiter,
                                                                                    closed)
        await asyncio.wait(waiters, timeout=SUBACK_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            return False
        return not any(reason.is_failure for reason in waiter.result())

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int,
                      reasons: list[Any], _properties: Any) -> None:
        waiter = self._subacks.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reasons)

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        self.probe("receive", False, f"received {message.topic} it never was allowed to read")

    async def _spoof_client_id(self) -> None:
        """Connect with a valid certificate of its own, claiming another device's client id."""
        if not await self.enroll() or self.credentials is None:
            return
        victim = await self.victim()
        if victim is None:
            return
        for clean in (False, True):
            spoof = LoopClient(victim, clean_session=clean)
            self.env.mqtt.attach(spoof)
            try:
                attempt = await self.attempt(self.credentials.context, client=spoof)
                self.probe_connect(f"connect as {victim} (clean_session={int(clean)})", attempt)
                if attempt.admitted:
                    spoof.abort()
            finally:
                self.env.mqtt.detach(spoof)

    async def _expired_certificate(self) -> None:
        """Enroll, never renew, and keep using the certificate after it expired."""
        env = self.env
        if not await self.enroll() or self.credentials is None:
            return
        expired = self.credentials.expires_at + 1.5
        if expired > env.scenario.duration - 1:
            self.skipped = (f"the certificate ({self.credentials.lifetime:.0f} s) does not "
                            "expire within the run")
            return
        if not await env.sleep(expired - env.now()):
            return
        attempt = await self.attempt(self.credentials.context)
        self.probe_connect("connect with an expired certificate", attempt)
        if attempt.admitted:
            self.client.abort()
        await self._reenroll_probe("re-enroll with an expired certificate", self.credentials)

    async def _foreign_ca(self) -> None:
        """Present a certificate naming another device, issued by a CA Fleet never trusted."""
        env = self.env
        async with env.enroll_slots:
            self.anchors, self.trust = await env.trust()
        victim = await self.victim()
        if victim is None:
            return
        foreign = foreign_credentials(victim, trust_domain=env.endpoints.trust_domain,
                                      anchors=self.anchors, received_at=env.now())
        forged = LoopClient(victim)
        env.mqtt.attach(forged)
        try:
            attempt = await self.attempt(foreign.context, client=forged)
            self.probe_connect(f"connect as {victim} with a foreign CA's certificate", attempt)
            if attempt.admitted:
                forged.abort()
        finally:
            env.mqtt.detach(forged)
        await self._reenroll_probe(f"re-enroll as {victim} with a foreign CA's certificate",
                                   foreign)

    async def _reenroll_probe(self, action: str, credentials: Credentials) -> None:
        try:
            await self.reenroll(credentials, rekey=True)
        except (ESTRefused, ESTHandshakeRefused) as exc:
            self.probe(action, True, str(exc)[:200])
        except ESTError as exc:
            self.probe(action, True, f"no certificate: {exc}"[:200])
        else:
            self.probe(action, False, "a certificate was issued")
