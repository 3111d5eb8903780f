"""The servers under test, each its own process on 127.0.0.1, all from one fixture.

- fleet      ``fleet serve broker`` (TLS listener, CONNECT gate, registry admission, topic
             policy, revocation watcher); ``fleet serve est --workers N`` for EST
- mosquitto  Mosquitto with the configuration ``fleet export mosquitto`` writes (mutual TLS,
             identity as user name and client id, the CRL, the ACL from the topic policy)
- amqtt      stock amqtt 0.12.1: a TLS listener, anonymous (no client certificate check, no
             ACL): the library Fleet's broker is built on, without Fleet
- openssl    ``openssl s_server -rev`` with Fleet's server certificate: the TLS handshake
             ceiling, server-auth only or requiring a client certificate

Only processes started here are ever signalled, by PID.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _measure import descendants, free_port, rss_kib, tree_cpu_seconds
from fixture import Fixture

PYTHON = sys.executable
FLEET = str(Path(sys.executable).parent / "fleet")
HERE = Path(__file__).resolve().parent
START_TIMEOUT = 60.0


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    env: dict[str, str] | None = None
    ready: str | None = None
    """A log line that says the server is up (without one: the port accepts connections)."""
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    pids: list[int] = field(default_factory=list)

    def start(self, log: Path) -> Server:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.tail()}")
            if self._up():
                self.pids = descendants(self.process.pid)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not come up in {START_TIMEOUT:.0f} s: {self.tail()}")

    def _up(self) -> bool:
        if self.ready is not None:
            assert self.log is not None
            return re.search(self.ready, self.log.read_text(errors="replace")) is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def tail(self, lines: int = 5) -> str:
        if self.log is None or not self.log.exists():
            return "no log"
        return " / ".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        """CPU seconds of the server's processes (all its workers)."""
        return tree_cpu_seconds(self.pids)

    def rss_kib(self) -> int:
        return rss_kib(self.pids)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def fleet_broker(fixture: Fixture) -> Server:
    port = free_port()
    return Server("fleet", [FLEET, "serve", "broker", "--port", str(port)], port,
                  env=fixture.env, ready=r"MQTT listening on mqtts://")


def fleet_est(fixture: Fixture, workers: int) -> Server:
    port = free_port()
    return Server(f"fleet EST x{workers}", [FLEET, "serve", "est", "--port", str(port),
                                            "--workers", str(workers)], port,
                  env=fixture.env, ready=r"EST listening on https://")


def mosquitto(fixture: Fixture) -> Server:
    """Mosquitto as ``fleet export mosquitto`` configures it (run as the user running this)."""
    port = free_port()
    directory = fixture.work / "mosquitto"
    subprocess.run([FLEET, "export", "mosquitto", "--out", str(directory), "--port", str(port),
                    "--user", _user(), "--force"], env=fixture.env, check=True,
                   capture_output=True, timeout=120)
    return Server("mosquitto", ["mosquitto", "-c", str(directory / "mosquitto.conf")], port)


def mosquitto_crl(fixture: Fixture) -> Path:
    return fixture.work / "mosquitto" / "crl.pem"


def rewrite_crl(fixture: Fixture, path: Path) -> None:
    """What an operator runs after a revocation for Mosquitto (then SIGHUP)."""
    subprocess.run([FLEET, "crl", "--force", "--out", str(path)], env=fixture.env, check=True,
                   capture_output=True, timeout=60)


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def stock_amqtt(fixture: Fixture) -> Server:
    port = free_port()
    paths = fixture.paths
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "ssl": True,
                                  "cafile": str(paths.chain), "certfile": str(paths.server_cert),
                                  "keyfile": str(paths.server_key)}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }
    return Server("amqtt", [PYTHON, str(HERE / "stock_amqtt.py"), json.dumps(config)], port)


def s_server(fixture: Fixture, *, mtls: bool) -> Server:
    port = free_port()
    paths = fixture.paths
    command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-rev", "-quiet",
               "-cert", str(paths.server_cert), "-key", str(paths.server_key),
               "-cert_chain", str(paths.issuing), "-num_tickets", "0", "-no_ca_names"]
    if mtls:
        command += ["-Verify", "1", "-CAfile", str(paths.chain)]
    return Server(f"openssl {'mTLS' if mtls else 'server-auth'}", command, port)
