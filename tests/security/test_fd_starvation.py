"""Running out of file descriptors neither spins the process nor floods the log, and it
recovers by itself; with both services in one `fleet up`, idle sockets to one of them do not
keep devices off the other."""

from __future__ import annotations

import os
import resource
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
from broker.helpers import Credentials, connect_packet
from cli.test_serve import read_until, service_env

pytestmark = pytest.mark.slow

FD_LIMIT = 256
IDLE_SOCKETS = 300
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(args, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=limited)
    try:
        yield child
    finally:
        child.kill()
        child.wait(10)


@contextmanager
def idle_sockets(port: int, count: int) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            with suppress(OSError):
                sockets.append(stack.enter_context(
                    socket.create_connection(("127.0.0.1", port), timeout=2)))
        yield sockets


def mqtt_connects(port: int, credentials: Credentials, timeout: float = 5.0) -> bool:
    context = ssl.create_default_context(cafile=str(credentials.ca))
    context.load_cert_chain(str(credentials.cert), str(credentials.key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(connect_packet(credentials.name))
            return tls.recv(4) == b"\x20\x02\x00\x00"
    except OSError:
        return False


def test_accept_backs_off_on_emfile_and_recovers(data_dir: Path, issue_service: object) -> None:
    """A broker whose cap exceeds the descriptors it has: accept fails with EMFILE. It must
    pause (no busy loop, one log line per interval) and accept again once sockets close."""
    service = issue_service("probe")  # type: ignore[operator]
    port = free_port()
    script = ("import logging, sys; logging.basicConfig(level=logging.WARNING);"
              "from fleet.settings import load_settings; from fleet.broker.server import serve;"
              f"serve(load_settings(), host='127.0.0.1', port={port})")
    env = service_env(data_dir, FLEET_BROKER_MAX_CONNECTIONS="1000",
                      FLEET_BROKER_HANDSHAKE_TIMEOUT="30s")
    with process([sys.executable, "-c", script], env) as broker:
        read_until(broker, r"MQTT listening")
        with idle_sockets(port, IDLE_SOCKETS):
            time.sleep(0.5)
            before = cpu_seconds(broker.pid)
            time.sleep(3.0)
            busy = (cpu_seconds(broker.pid) - before) / 3.0
            assert busy < 0.3, f"accept loop busy at {busy:.0%} of a core"
        deadline = time.monotonic() + 10
        while not mqtt_connects(port, service):
            assert time.monotonic() < deadline, "broker did not recover after EMFILE"
            time.sleep(0.2)
        broker.kill()
        _, stderr = broker.communicate(timeout=10)
    lines = [line for line in stderr.splitlines() if "accept failed" in line]
    assert 1 <= len(lines) <= 3, stderr[-2000:]


def test_idle_sockets_to_est_leave_the_broker_admitting_devices(
        data_dir: Path, issue_service: object) -> None:
    """`fleet up` under ulimit -n 256: 300 idle sockets to the EST port."""
    service = issue_service("probe")  # type: ignore[operator]
    env = service_env(data_dir)
    fleet = str(Path(sys.executable).with_name("fleet"))
    with process([fleet, "up", "--est-port", "0", "--mqtt-port", "0"], env) as up:
        lines = read_until(up, r"^data dir: ")
        est = int(next(x for x in lines if x.startswith("EST")).rsplit(":", 1)[1].split("/")[0])
        mqtt = int(next(x for x in lines if x.startswith("MQTT")).rsplit(":", 1)[1])
        with idle_sockets(est, IDLE_SOCKETS):
            time.sleep(0.5)
            before = cpu_seconds(up.pid)
            assert mqtt_connects(mqtt, service)
            assert mqtt_connects(mqtt, service)
            time.sleep(2.0)
            busy = (cpu_seconds(up.pid) - before) / 2.5
            assert busy < 0.5, f"`fleet up` busy at {busy:.0%} of a core"
        up.kill()
        _, stderr = up.communicate(timeout=10)
    assert len(stderr.splitlines()) < 50, stderr[-2000:]
