from __future__ import annotations

import importlib.util
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.cli.app import EXIT_REFUSED

from .helpers import Run, read_until, service_env, start

EST_MODULE, BROKER_MODULE = "provisioning.server", "fleet.broker.server"


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_up_refused_when_broker_is_not_installed(fleet: Run,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, BROKER_MODULE, None)
    result = fleet("up", "--est-port", "0", "--mqtt-port", "0")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr == (f"error: {BROKER_MODULE} is not available in this installation, "
                             "so this service cannot run\n")


def test_serve_est_refused_when_not_installed(fleet: Run,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, EST_MODULE, None)
    result = fleet("serve", "est", "--port", "0")
    assert result.exit_code == EXIT_REFUSED
    assert f"{EST_MODULE} is not available" in result.stderr


def test_serve_broker_refused_when_not_installed(fleet: Run,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, BROKER_MODULE, None)
    result = fleet("serve", "broker", "--port", "0")
    assert result.exit_code == EXIT_REFUSED
    assert f"{BROKER_MODULE} is not available" in result.stderr


def test_up_refused_bad_port(fleet: Run) -> None:
    result = fleet("up", "--est-port", "70000")
    assert result.exit_code == 2
    assert "--est-port" in result.stderr


# -- real processes ---------------------------------------------------------------------------

def tls_client(chain: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(chain))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


@pytest.mark.slow
@pytest.mark.skipif(not (available(EST_MODULE) and available(BROKER_MODULE)),
                    reason="EST service and broker are not both installed yet")
def test_up_runs_both_listeners_until_sigterm(fleet: Run, tmp_path: Path,
                                              started: list[subprocess.Popen[str]]) -> None:
    data_dir = tmp_path / "up-data"
    process = start(started, ["up", "--est-port", "0", "--mqtt-port", "0"],
                    service_env(data_dir))
    lines = read_until(process, r"^data dir: ")
    est = next(re.search(r"EST listening on https://127\.0\.0\.1:(\d+)/\.well-known/est$", x)
               for x in lines if x.startswith("EST"))
    mqtt = next(re.search(r"MQTT listening on mqtts://127\.0\.0\.1:(\d+)$", x)
                for x in lines if x.startswith("MQTT"))
    assert est is not None
    assert mqtt is not None
    assert lines[-1] == f"data dir: {data_dir}"
    chain = data_dir / "ca" / "chain.pem"
    with socket.create_connection(("127.0.0.1", int(est.group(1))), timeout=10) as raw, \
            tls_client(chain).wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n"
                    b"Connection: close\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.1 200")
    service = Run(data_dir, fleet.runner)
    service.ok("cert", "issue-service", "probe", "--out-dir", str(tmp_path / "svc"))
    client = tls_client(chain, tmp_path / "svc/probe.pem", tmp_path / "svc/probe.key")
    with socket.create_connection(("127.0.0.1", int(mqtt.group(1))), timeout=10) as raw, \
            client.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


@pytest.mark.slow
@pytest.mark.skipif(not available(EST_MODULE), reason="EST service not installed yet")
def test_serve_est_until_sigint(data_dir: Path, started: list[subprocess.Popen[str]]) -> None:
    process = start(started, ["serve", "est", "--port", "0"], service_env(data_dir))
    [line] = read_until(process, r"EST listening on https://")
    assert re.fullmatch(r"EST listening on https://127\.0\.0\.1:\d+/\.well-known/est", line)
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0
