"""Starting and stopping the service: start()/close(), serve() with workers, metrics, TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from broker.health_helpers import metric
from est_support import EST, Est, make_csr
from sqlmodel import select

from fleet.authority import serial_hex
from fleet.errors import ConfigError
from fleet.logs import fields_of
from fleet.registry.engine import session as new_session
from fleet.registry.models import Certificate, CertificateStatus
from fleet.settings import Settings, load_settings
from provisioning.server import start
from provisioning.tls import server_context

READY = re.compile(r"^EST listening on https://127\.0\.0\.1:(\d+)/\.well-known/est$")
METRICS_LINE = re.compile(r"^metrics: http://127\.0\.0\.1:(\d+)/metrics$")


def _settings(data_dir: Path, **env: str) -> Settings:
    return load_settings(environ={"FLEET_DATA_DIR": str(data_dir),
                                  "FLEET_EST_METRICS_PORT": "0", **env})


def test_start_reports_the_bound_port_and_close_stops_listening(data_dir: Path) -> None:
    settings = _settings(data_dir)

    async def scenario() -> int:
        server = await start(settings, host="127.0.0.1", port=0)
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.close()
        await server.close()
        await server.close()  # idempotent
        return server.port

    port = asyncio.run(scenario())
    assert port > 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_start_refuses_a_port_in_use(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> None:
            await start(_settings(data_dir), host="127.0.0.1", port=port)

        with pytest.raises(ConfigError, match=r"est\.port"):
            asyncio.run(scenario())


def test_start_refuses_without_a_ca(tmp_path: Path) -> None:
    async def scenario() -> None:
        await start(_settings(tmp_path / "empty"), host="127.0.0.1", port=0)

    with pytest.raises(Exception, match="fleet init"):
        asyncio.run(scenario())


def test_tls_context_requires_1_2_and_verifies_optional_client_certificates(
        est: Est) -> None:
    context = server_context(est.settings)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_OPTIONAL


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_clients_enroll(est: Est, version: ssl.TLSVersion) -> None:
    context = est.context()
    context.minimum_version = context.maximum_version = version
    with socket.create_connection(("127.0.0.1", est.port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                 ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_metrics_count_requests_enrollments_and_read_the_registry(
        make_est: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="provisioning")
    est: Est = make_est(FLEET_EST_METRICS_PORT="0")  # type: ignore[operator]
    assert est.metrics_port
    assert est.enroll(make_csr("dev-m"), est.token()).status == 200
    assert est.enroll(make_csr("dev-n"), None).status == 401
    device = est.device("dev-r")
    assert est.reenroll(make_csr("dev-r", device.key), device).status == 200
    for _ in range(2):
        est.token(group="cameras")
    port = est.metrics_port
    assert metric(port, "fleet_est_requests_total", operation="simpleenroll", status="200") == 1
    assert metric(port, "fleet_est_requests_total", operation="simpleenroll", status="401") == 1
    assert metric(port, "fleet_est_enrollments_total", operation="simpleenroll",
                  outcome="issued") == 1
    assert metric(port, "fleet_est_enrollments_total", operation="simpleenroll",
                  outcome="refused") == 1
    assert metric(port, "fleet_est_enrollments_total", operation="simplereenroll",
                  outcome="issued") == 1
    assert metric(port, "fleet_est_request_seconds_count", operation="simpleenroll") == 2
    assert 0 < metric(port, "fleet_est_request_seconds_sum", operation="simpleenroll") < 30
    with new_session(est.engine) as session:
        soonest = min(c.not_after for c in session.exec(select(Certificate).where(
            Certificate.status == CertificateStatus.ACTIVE)).all())
    assert metric(port, "fleet_certificate_earliest_expiry_timestamp_seconds") \
        == soonest.timestamp()
    assert metric(port, "fleet_tokens_unused", group="cameras") == 2
    assert metric(port, "fleet_tokens_unused", group="sensors") == 0  # all used

    lines = [r for r in caplog.records if r.name == "provisioning" and fields_of(r)]
    issued, refused, renewed = (fields_of(r) for r in lines[:3])
    assert issued["status"] == 200
    assert issued["issued"]
    assert issued["token_id"]
    assert refused["status"] == 401
    assert "token_id" not in refused
    assert refused["reason"]
    assert renewed["identity"] == "device/dev-r"
    assert renewed["serial"] == serial_hex(device.certificate.serial_number)
    assert all({"request_id", "method", "path", "duration_ms", "source"} <= set(f)
               for f in (issued, refused, renewed))
    assert len({f["request_id"] for f in (issued, refused, renewed)}) == 3
    assert [r.levelno for r in lines[:3]] == [logging.INFO, logging.DEBUG, logging.INFO]


def test_registry_gauges_are_read_at_most_once_per_refresh_interval(
        make_est: object) -> None:
    est: Est = make_est(FLEET_EST_METRICS_PORT="0")  # type: ignore[operator]
    assert est.metrics_port
    est.token(group="cameras")
    assert metric(est.metrics_port, "fleet_tokens_unused", group="cameras") == 1
    est.token(group="cameras")
    assert metric(est.metrics_port, "fleet_tokens_unused", group="cameras") == 1  # cached


def test_metrics_port_minus_one_serves_nothing(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_METRICS_PORT="-1")  # type: ignore[operator]
    assert est.metrics_port is None


def test_metrics_port_in_use_stops_the_service_at_start(settings: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = settings.with_overrides(est_metrics_port=port)
        with pytest.raises(ConfigError, match=rf"est\.metrics_port='127\.0\.0\.1:{port}': "
                                              "cannot listen"):
            asyncio.run(start(busy, host="127.0.0.1", port=0))


class Served:
    """``serve()`` in a child process, as ``fleet serve est`` runs it (its temporary files,
    the workers' metrics among them, under *tmp*)."""

    def __init__(self, data_dir: Path, workers: int, **env: str) -> None:
        code = ("from fleet.settings import load_settings\n"
                "from provisioning.server import serve\n"
                f"serve(load_settings(), host='127.0.0.1', port=0, workers={workers})\n")
        self.tmp = data_dir.parent / "served-tmp"
        self.tmp.mkdir()
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "FLEET_DATA_DIR": str(data_dir),
                            "FLEET_EST_METRICS_PORT": "0", "TMPDIR": str(self.tmp), **env})
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr or []),
                         daemon=True).start()
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        match = READY.match(line)
        assert match, (line, "".join(self.stderr))
        self.port = int(match.group(1))
        line = self.process.stdout.readline().strip()
        metrics = METRICS_LINE.match(line)
        assert metrics, (line, "".join(self.stderr))
        self.metrics_port: int | None = int(metrics.group(1))

    def metrics_dir(self) -> Path:
        """The directory the workers write their metrics to."""
        [directory] = self.tmp.glob("fleet-metrics-*")
        return directory

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.mark.slow
def test_serve_one_worker_enrolls_renews_and_stops_on_sigterm(est: Est) -> None:
    served = Served(est.settings.data_dir, workers=1)
    try:
        client = dataclasses.replace(est, port=served.port)
        assert client.enroll(make_csr("dev-s1"), est.token()).status == 200
        device = est.device("dev-s2")  # renewal reads the client certificate from the TLS layer
        assert client.reenroll(make_csr("dev-s2", device.key), device).status == 200
    finally:
        assert served.stop() == 0


@pytest.mark.slow
def test_serve_two_workers_share_one_port_and_a_scrape_sums_both(est: Est) -> None:
    served = Served(est.settings.data_dir, workers=2)
    assert served.metrics_port is not None
    try:
        client = dataclasses.replace(est, port=served.port)
        for i in range(20):  # each on a new connection: the kernel spreads them
            assert client.enroll(make_csr(f"dev-w{i}"), est.token()).status == 200
        files = sorted(p.name for p in served.metrics_dir().iterdir())
        pids = {name.rsplit("_", 1)[1] for name in files}
        assert len(pids) == 2, files  # both workers served requests and wrote metrics
        for _ in range(6):  # whichever worker answers a scrape, it counts both
            assert metric(served.metrics_port, "fleet_est_enrollments_total",
                          operation="simpleenroll", outcome="issued") == 20
        directory = served.metrics_dir()
    finally:
        assert served.stop() == 0
    assert not directory.exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_unlabelled_and_labelled_paths_share_the_service(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_LABELS="a=sensors,b=cameras")  # type: ignore[operator]
    for path in (f"{EST}/csrattrs", f"{EST}/a/csrattrs", f"{EST}/b/cacerts"):
        assert est.get(path).status == 200
