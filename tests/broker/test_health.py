"""The broker's /metrics and /healthz on broker.metrics_port, over real HTTP."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import pytest

from device_sim.services import free_port
from fleet.authority import Authority
from fleet.errors import ConfigError
from fleet.logs import fields_of

from .conftest import Enroll, StartBroker
from .health_helpers import get, healthz, metric
from .helpers import Clients, Credentials, wait_until

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
        assert metric(port, "fleet_broker_connections", state="admitted") == 2
        assert 0 <= metric(port, "fleet_broker_revocation_poll_age_seconds") < 5
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        assert device.disconnected.wait(2)
        assert wait_until(lambda: metric(port, "fleet_broker_revocation_drops_total",
                                         kind="revoked") == 1)
        assert wait_until(lambda: metric(port, "fleet_broker_connections",
                                         state="admitted") == 1)
        clients.connect(d1, expect=NOT_AUTHORIZED)
        assert metric(port, "fleet_broker_connects_refused_total", connack="0x05") == 1
    assert get(port, "/nothing")[0] == 404


def test_metrics_port_in_use_stops_the_broker_at_start(start_broker: StartBroker) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"broker\.metrics_port='127\.0\.0\.1:{port}': "
                                              "cannot listen: Address already in use"):
            start_broker(metrics_port=str(port))


def test_metrics_port_minus_one_serves_nothing(start_broker: StartBroker) -> None:
    broker = start_broker(metrics_port="-1")
    assert broker.server is not None
    assert broker.server.health is None


def test_metrics_port_zero_picks_a_free_port(start_broker: StartBroker) -> None:
    first, second = start_broker(metrics_port="0"), start_broker(metrics_port="0")
    assert first.server is not None
    assert first.server.health is not None
    assert second.server is not None
    assert second.server.health is not None
    ports = {first.server.health.port, second.server.health.port}
    assert len(ports) == 2
    assert 0 not in ports
    for port in ports:
        assert healthz(port)[0] == 200


def test_metrics_count_connections_messages_denials_and_time_revocation_drops(
        start_broker: StartBroker, enroll: Enroll, issue_service: Callable[[str], Credentials],
        sqlite_authority: Authority, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fleet.broker.gate")
    broker = start_broker(metrics_port="0", revocation_poll_interval="200ms")
    assert broker.server is not None
    assert broker.server.health is not None
    port = broker.server.health.port
    d1 = enroll("d1")
    with Clients(broker) as clients:
        service = clients.connect(issue_service("collector"))
        assert service.subscribe("devices/+/telemetry") == [1]
        device = clients.connect(d1)
        for n in range(3):
            device.publish("devices/d1/telemetry", b"%d" % n, qos=1)
        for _ in range(3):
            assert service.receive() is not None
        device.publish("devices/d2/telemetry", b"not mine", qos=1)  # denied, still PUBACKed
        assert device.subscribe("devices/d2/commands/#") == [0x80]
        assert metric(port, "fleet_broker_connections", state="admitted") == 2
        assert metric(port, "fleet_broker_connections", state="pending") == 0
        assert metric(port, "fleet_broker_connects_admitted_total", kind="device") == 1
        assert metric(port, "fleet_broker_connects_admitted_total", kind="service") == 1
        assert metric(port, "fleet_broker_messages_received_total") == 4
        assert metric(port, "fleet_broker_messages_delivered_total") == 3
        assert metric(port, "fleet_broker_messages_dropped_total", reason="denied") == 1
        assert metric(port, "fleet_broker_messages_dropped_total", reason="queue_full") == 0
        assert metric(port, "fleet_broker_acl_denials_total", action="publish") == 1
        assert metric(port, "fleet_broker_acl_denials_total", action="subscribe") == 1

        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        assert device.disconnected.wait(5)
        assert wait_until(lambda: metric(port, "fleet_broker_revocation_drop_seconds_count",
                                         kind="revoked") == 1)
        latency = metric(port, "fleet_broker_revocation_drop_seconds_sum", kind="revoked")
        assert 0 < latency < 5  # a poll interval of 0.2 s, and a loaded machine
        assert metric(port, "fleet_broker_revocation_drop_seconds_bucket", kind="revoked",
                      le="+Inf") == 1
        clients.connect(d1, expect=NOT_AUTHORIZED)
        assert metric(port, "fleet_broker_connects_refused_total", connack="0x05",
                      check="registry") == 1

    lines = {record.getMessage(): fields_of(record) for record in caplog.records
             if record.name == "fleet.broker.gate"}
    admitted = [fields_of(r) for r in caplog.records if r.getMessage() == "connection admitted"]
    assert {f["identity"] for f in admitted} == {"device/d1", "service/collector"}
    assert all({"connection_id", "peer", "serial", "client_id"} <= set(f) for f in admitted)
    closed = [fields_of(r) for r in caplog.records if r.getMessage() == "connection closed"]
    dropped = next(f for f in closed if f["identity"] == "device/d1")
    assert dropped["reason"] == "device d1 revoked"
    assert dropped["connection_id"] in {f["connection_id"] for f in admitted}
    refused = lines["connection refused"]
    assert refused["identity"] == "device/d1"
    assert refused["client_id"] == "d1"
    assert refused["connack"] == "0x05"
    assert refused["check"] == "registry"
    assert "revoked" in refused["reason"]
