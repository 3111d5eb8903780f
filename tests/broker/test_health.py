"""The broker's /metrics and /healthz on broker.metrics_port, over real HTTP."""

from __future__ import annotations

import logging
import socket

import pytest

from device_sim.services import free_port
from fleet.authority import Authority
from fleet.errors import ConfigError

from .conftest import Enroll, StartBroker
from .health_helpers import get, healthz, metric
from .helpers import Clients, wait_until

NOT_AUTHORIZED = 5


def test_metrics_and_healthz_report_poll_age_connections_drops_and_refusals(
        start_broker: StartBroker, enroll: Enroll, sqlite_authority: Authority,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fleet.broker.health")
    port = free_port()
    broker = start_broker(metrics_port=str(port))
    assert f"broker metrics on http://127.0.0.1:{port}/metrics" in caplog.text
    status, report = healthz(port)
    assert status == 200
    assert report["status"] == "ok"
    assert 0 <= report["revocation_poll_age_seconds"] < 5
    assert report["revocation_max_staleness_seconds"] == 5
    assert report["revocation_poll_failures"] == 0
    assert report["last_poll_error"] is None
    d1 = enroll("d1")
    with Clients(broker) as clients:
        device = clients.connect(d1)
        clients.connect(enroll("d2"))
        status, headers, body = get(port, "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert b"# TYPE fleet_broker_revocation_poll_failures_total counter" in body
        assert metric(port, "fleet_broker_connections_open") == 2
        assert 0 <= metric(port, "fleet_broker_revocation_poll_age_seconds") < 5
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        assert device.disconnected.wait(2)
        assert wait_until(lambda: metric(port, "fleet_broker_revocation_drops_total",
                                         kind="revoked") == 1)
        assert wait_until(lambda: metric(port, "fleet_broker_connections_open") == 1)
        clients.connect(d1, expect=NOT_AUTHORIZED)
        assert metric(port, "fleet_broker_connects_refused_total", connack="0x05") == 1
    assert get(port, "/nothing")[0] == 404


def test_metrics_port_in_use_stops_the_broker_at_start(start_broker: StartBroker) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"broker\.metrics_port='127\.0\.0\.1:{port}': "
                                              "cannot listen: Address already in use"):
            start_broker(metrics_port=str(port))


def test_metrics_port_zero_serves_nothing(start_broker: StartBroker) -> None:
    broker = start_broker(metrics_port="0")
    assert broker.server is not None
    assert broker.server.health is None
