"""Starting and stopping the service: start()/close(), serve() with workers, metrics, TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from est_support import EST, Est, make_csr

from fleet.errors import ConfigError
from fleet.settings import Settings, load_settings
from provisioning.server import start
from provisioning.tls import server_context

READY = re.compile(r"^EST listening on https://127\.0\.0\.1:(\d+)/\.well-known/est$")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _free_port_pair() -> int:
    """A port P such that P and P + 1 are both free (worker i serves metrics on P + i)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            base = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
            return base
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


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


def test_metrics_count_requests_and_issued_certificates(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_METRICS_PORT=str(_free_port()))  # type: ignore[operator]
    assert est.enroll(make_csr("dev-m"), est.token()).status == 200
    assert est.enroll(make_csr("dev-n"), None).status == 401
    url = f"http://127.0.0.1:{est.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    assert re.search(r'fleet_est_requests_total\{operation="simpleenroll",status="200",'
                     r'pid="\d+"\} 1', text)
    assert re.search(r'fleet_est_requests_total\{operation="simpleenroll",status="401"', text)
    assert re.search(r'fleet_est_certificates_issued_total\{operation="simpleenroll",'
                     r'pid="\d+"\} 1', text)
    assert 'fleet_est_request_seconds_count{operation="simpleenroll"' in text


class Served:
    """``serve()`` in a child process, as ``fleet serve est`` runs it."""

    def __init__(self, data_dir: Path, workers: int, **env: str) -> None:
        code = ("from fleet.settings import load_settings\n"
                "from provisioning.server import serve\n"
                f"serve(load_settings(), host='127.0.0.1', port=0, workers={workers})\n")
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "FLEET_DATA_DIR": str(data_dir),
                            "FLEET_EST_METRICS_PORT": "0", **env})
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr or []),
                         daemon=True).start()
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        match = READY.match(line)
        assert match, (line, "".join(self.stderr))
        self.port = int(match.group(1))

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
def test_serve_two_workers_share_one_port(est: Est) -> None:
    base = _free_port_pair()
    served = Served(est.settings.data_dir, workers=2, FLEET_EST_METRICS_PORT=str(base))
    try:
        client = dataclasses.replace(est, port=served.port)
        for i in range(20):
            assert client.enroll(make_csr(f"dev-w{i}"), est.token()).status == 200
        pids = set()
        issued = 0
        for port in (base, base + 1):
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            pids |= set(re.findall(r'pid="(\d+)"', text))
            issued += sum(int(n) for n in re.findall(
                r"fleet_est_certificates_issued_total\{[^}]*\} (\d+)", text))
        assert issued == 20
        assert len(pids) == 2  # both workers served requests on the one port
    finally:
        assert served.stop() == 0


def test_unlabelled_and_labelled_paths_share_the_service(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_LABELS="a=sensors,b=cameras")  # type: ignore[operator]
    for path in (f"{EST}/csrattrs", f"{EST}/a/csrattrs", f"{EST}/b/cacerts"):
        assert est.get(path).status == 200
