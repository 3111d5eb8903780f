"""What the devices of one process share: endpoints, clients, limits, the clock and the metrics
(device side: nothing from Fleet).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from device_sim.crypto import fingerprint_sha256
from device_sim.est_client import ESTClient
from device_sim.metrics import Metrics
from device_sim.mqtt_loop import MqttLoop
from device_sim.scenario import Scenario
from device_sim.tls import pinned_trust_anchors, provisional_context, trust_context

RESTART_SLACK = 3.0
"""Seconds after a broker restart during which drops and refused connections are expected."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the devices go, and the root CA fingerprint they were built to trust."""

    est_url: str
    mqtt_host: str
    mqtt_port: int
    pinned_root_sha256: str
    trust_domain: str = "fleet.local"


@dataclass(slots=True)
class RestartWindow:
    begin: float
    end: float | None = None


@dataclass(slots=True)
class SpoofSighting:
    """A message a misbehaving device should never have got through, seen by its target."""

    misbehaver: str
    where: str


@dataclass
class Environment:
    """One per process; devices hold a reference and report into it."""

    scenario: Scenario
    endpoints: Endpoints
    est: ESTClient
    mqtt: MqttLoop
    metrics: Metrics
    rng: random.Random
    started: float
    enroll_slots: asyncio.Semaphore = field(init=False)
    renew_slots: asyncio.Semaphore = field(init=False)
    connect_slots: asyncio.Semaphore = field(init=False)
    stop: asyncio.Future[None] = field(init=False)
    draining: bool = False
    restarts: list[RestartWindow] = field(default_factory=list)
    online: set[str] = field(default_factory=set)
    well_behaved: set[str] = field(default_factory=set)
    sightings: list[SpoofSighting] = field(default_factory=list)
    issued_lifetime: float | None = None
    on_session_ready: Callable[[str], None] | None = None
    on_first_certificate: Callable[[float], None] | None = None
    _trust: dict[tuple[str, ...], tuple[list[x509.Certificate], ssl.SSLContext]] = field(
        default_factory=dict)
    _provisional: ssl.SSLContext = field(default_factory=provisional_context)

    def __post_init__(self) -> None:
        # Renewals do not queue behind the factory's first enrollments: separate slots.
        self.enroll_slots = asyncio.Semaphore(self.scenario.enroll_concurrency)
        self.renew_slots = asyncio.Semaphore(self.scenario.enroll_concurrency)
        self.connect_slots = asyncio.Semaphore(self.scenario.connect_concurrency)
        self.stop = asyncio.get_running_loop().create_future()

    def now(self) -> float:
        """Seconds since the run started (monotonic)."""
        return asyncio.get_running_loop().time() - self.started

    @property
    def stopping(self) -> bool:
        return self.stop.done()

    @property
    def restart_count(self) -> int:
        return len(self.restarts)

    def in_restart_window(self, t: float) -> bool:
        """Is *t* during a broker restart (or just after it, while the fleet comes back)?"""
        return any(w.begin <= t and (w.end is None or t <= w.end + RESTART_SLACK)
                   for w in self.restarts)

    async def trust(self) -> tuple[list[x509.Certificate], ssl.SSLContext]:
        """Bootstrap trust like a factory-provisioned device (RFC 7030 4.1.1).

        Fetch ``/cacerts`` over a provisionally trusted connection, accept the answer only if it
        holds the pinned root, then trust exactly those certificates. Devices that received
        the same certificates share one parsed trust store.
        """
        offered = await self.est.cacerts(context=self._provisional)
        anchors = pinned_trust_anchors(offered,
                                       pinned_root_sha256=self.endpoints.pinned_root_sha256)
        key = tuple(sorted(fingerprint_sha256(c) for c in anchors))
        known = self._trust.get(key)
        if known is None:
            known = (anchors, trust_context(anchors))
            self._trust[key] = known
        return known

    def sighting(self, misbehaver: str, where: str) -> None:
        """A message from a misbehaving device reached someone: the system let it through."""
        self.sightings.append(SpoofSighting(misbehaver, where))

    def certificate_received(self, lifetime: float) -> None:
        if self.issued_lifetime is None:
            self.issued_lifetime = lifetime
            if self.on_first_certificate is not None:
                self.on_first_certificate(lifetime)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless the run stops first; True if the full time passed."""
        if seconds <= 0:
            return not self.stopping
        done, _ = await asyncio.wait((self.stop,), timeout=seconds)
        return not done
