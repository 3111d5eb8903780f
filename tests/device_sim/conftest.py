"""Fixtures: the real EST service and broker in the test's event loop, and a device world."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import Engine

from device_sim.environment import Endpoints, Environment
from device_sim.est_client import ESTClient
from device_sim.metrics import Metrics
from device_sim.mqtt_loop import MqttLoop
from device_sim.scenario import Scenario
from fleet.authority import Authority
from fleet.broker.server import start as start_broker
from fleet.pki import fingerprint_sha256
from fleet.settings import Settings, load_settings
from provisioning.server import start as start_est


@dataclass
class Fleet:
    """Running services, the authority on their registry, and where devices find them."""

    settings: Settings
    authority: Authority
    endpoints: Endpoints


@pytest.fixture
def sim_settings(data_dir: Path, sqlite_engine: Engine) -> Settings:
    return load_settings(environ={
        "FLEET_DATA_DIR": str(data_dir), "FLEET_EST_METRICS_PORT": "0",
        "FLEET_BROKER_METRICS_PORT": "0",
        "FLEET_CERTIFICATES_DEVICE_LIFETIME": "1h",
        "FLEET_BROKER_REVOCATION_POLL_INTERVAL": "100ms"})


@pytest.fixture
def run_fleet(sim_settings: Settings, sqlite_engine: Engine,
              ) -> Callable[[], AsyncIterator[Fleet]]:
    """``async with run_fleet() as fleet``: EST and broker on free loopback ports."""
    authority = Authority(settings=sim_settings, engine=sqlite_engine)

    @asynccontextmanager
    async def running() -> AsyncIterator[Fleet]:
        est = await start_est(sim_settings, host="127.0.0.1", port=0)
        try:
            broker = await start_broker(sim_settings, host="127.0.0.1", port=0)
            try:
                yield Fleet(sim_settings, authority, Endpoints(
                    est_url=f"https://127.0.0.1:{est.port}", mqtt_host="127.0.0.1",
                    mqtt_port=broker.port,
                    pinned_root_sha256=fingerprint_sha256(authority.ca.root),
                    trust_domain=sim_settings.trust_domain))
            finally:
                await broker.close()
        finally:
            await est.close()

    return running  # type: ignore[return-value]


@asynccontextmanager
async def environment(endpoints: Endpoints, scenario: Scenario | None = None,
                      ) -> AsyncIterator[Environment]:
    """What devices share, around one aiohttp session and one MQTT loop."""
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
        mqtt = MqttLoop()
        mqtt.start()
        env = Environment(scenario=scenario or Scenario(devices=10, duration=30),
                          endpoints=endpoints, est=ESTClient(endpoints.est_url, session=http),
                          mqtt=mqtt, metrics=Metrics(), rng=random.Random(1),
                          started=asyncio.get_running_loop().time())
        try:
            yield env
        finally:
            if not env.stop.done():
                env.stop.set_result(None)
            mqtt.stop()
