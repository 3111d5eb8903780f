"""Fleet's services as child processes, for self-contained runs and end-to-end tests.

``fleet serve est`` and ``fleet serve broker`` run on free loopback ports over one data dir;
the broker can be restarted on the same port, which is how a scenario's broker restart works
when the simulator owns the services. Operator side: it runs the ``fleet`` command, as an
operator does, and imports nothing from Fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

FLEET = (sys.executable, "-c", "from fleet.cli.app import main; main()")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServiceError(RuntimeError):
    """A service did not start (the message carries the end of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def wait_listening(host: str, port: int, *, timeout: float,
                         process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until *host*:*port* accepts TCP connections (or the process exits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"exited with status {process.returncode}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise ServiceError(f"nothing listening on {host}:{port} after {timeout:g} s") \
                    from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


class LocalServices:
    """The EST service and the broker, each in its own ``fleet serve`` process.

    Processes are plain ``subprocess.Popen`` children, so one instance can be started in one
    event loop and restarted or stopped from another (as test fixtures do).
    """

    def __init__(self, *, data_dir: Path, config: Path | None = None,
                 environ: Mapping[str, str] | None = None, host: str = "127.0.0.1",
                 est_port: int | None = None, broker_port: int | None = None) -> None:
        self.data_dir = data_dir
        self.config = config
        self.host = host
        self.est_port = est_port or free_port(host)
        self.broker_port = broker_port or free_port(host)
        self.environ = {**os.environ, **(environ or {}), "FLEET_DATA_DIR": str(data_dir)}
        self.log_dir = data_dir / "logs"
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def est_url(self) -> str:
        return f"https://{self.host}:{self.est_port}"

    def _command(self, *args: str) -> list[str]:
        config = ["--config", str(self.config)] if self.config else []
        return [*FLEET, "--data-dir", str(self.data_dir), *config, *args]

    async def init(self) -> None:
        """``fleet init`` (idempotent): CA, server certificate and database."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "init.log").open("ab") as log:
            process = subprocess.Popen(self._command("init"), env=self.environ, stdout=log,
                                       stderr=log)
        if await _exited(process, timeout=READY_TIMEOUT) != 0:
            raise ServiceError(f"fleet init failed:\n{self.log_tail('init')}")

    async def start(self) -> None:
        await self.init()
        await asyncio.gather(self._start("est", self.est_port),
                             self._start("broker", self.broker_port))

    async def _start(self, name: str, port: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                self._command("serve", name, "--host", self.host, "--port", str(port)),
                env=self.environ, stdout=log, stderr=log, start_new_session=True)
        self._processes[name] = process
        try:
            await wait_listening(self.host, port, timeout=READY_TIMEOUT, process=process)
        except ServiceError as exc:
            await self._stop(name)
            raise ServiceError(f"fleet serve {name}: {exc}\n{self.log_tail(name)}") from None

    async def restart_broker(self) -> None:
        """Stop the broker (SIGTERM) and start it again on the same port."""
        await self._stop("broker")
        await self._start("broker", self.broker_port)

    def pid(self, name: str) -> int | None:
        process = self._processes.get(name)
        return process.pid if process is not None else None

    async def _stop(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        if await _exited(process, timeout=STOP_TIMEOUT) is None:
            process.kill()
            await _exited(process, timeout=STOP_TIMEOUT)

    async def stop(self) -> None:
        await asyncio.gather(*(self._stop(name) for name in list(self._processes)))

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def __aenter__(self) -> LocalServices:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


async def _exited(process: subprocess.Popen[bytes], *, timeout: float) -> int | None:
    """The exit status, or None if *process* still runs after *timeout* seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while process.poll() is None:
        if loop.time() > deadline:
            return None
        await asyncio.sleep(0.05)
    return process.returncode
