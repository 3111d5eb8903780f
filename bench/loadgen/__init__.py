"""The neutral load generator: the same client processes for every system under test.

Each worker is its own process (multiprocessing, spawn), never the broker's and never an
asyncio loop of the benchmark: paho-mqtt for MQTT, blocking ``ssl`` sockets for the idle
sessions and EST. A worker sets itself up (contexts, keys, connections) and says "ready"; then
each request the parent sends is one piece of work, answered with its result, until None. The
parent reads the server's CPU right around the work, so no start-up of a worker lands in the
window, and one pool serves every repeat.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import signal
import ssl
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SPAWN = multiprocessing.get_context("spawn")

Credential = tuple[str, str, str]
"""(name, certificate file, key file) of one client identity: the name is the CN."""


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_context(chain: str, credential: Credential | None = None) -> ssl.SSLContext:
    """TLS client context trusting the fleet chain, with the client certificate if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(chain)
    if credential is not None:
        context.load_cert_chain(credential[1], credential[2])
    return context


def serve(pipe: Connection, handle: Callable[[Any], Any]) -> None:
    """Say "ready", then answer each request with handle(request) until the parent sends None."""
    pipe.send("ready")
    while (request := pipe.recv()) is not None:
        pipe.send(handle(request))


def _entry(target: Callable[..., None], pipe: Connection, args: tuple[Any, ...]) -> None:
    raise_open_files_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends its workers itself
    target(pipe, *args)


class Workers:
    """Worker processes started together; ended by PID however the run ends."""

    def __init__(self, target: Callable[..., None], per_worker: Sequence[tuple[Any, ...]]
                 ) -> None:
        self.processes: list[BaseProcess] = []
        self.pipes: list[Connection] = []
        for args in per_worker:
            parent, child = SPAWN.Pipe()
            process = SPAWN.Process(target=_entry, args=(target, child, args), daemon=True)
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_: object) -> None:
        self.end()

    def receive(self, timeout: float, what: str) -> list[Any]:
        """One message from every worker, within *timeout* seconds each."""
        answers = []
        for process, pipe in zip(self.processes, self.pipes, strict=True):
            try:
                if not pipe.poll(timeout):
                    raise RuntimeError(f"{what}: worker {process.pid} did not answer in "
                                       f"{timeout:.0f} s")
                answers.append(pipe.recv())
            except EOFError:
                process.join(5)
                raise RuntimeError(f"{what}: worker {process.pid} ended (exit code "
                                   f"{process.exitcode}); its error is above") from None
        return answers

    def ready(self, timeout: float = 300.0) -> list[Any]:
        return self.receive(timeout, "ready")

    def send(self, message: Any) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def ask(self, message: Any, timeout: float, what: str) -> list[Any]:
        """Send every worker *message*; their answers."""
        self.send(message)
        return self.receive(timeout, what)

    def end(self) -> None:
        for process, pipe in zip(self.processes, self.pipes, strict=True):
            if process.is_alive():
                with contextlib.suppress(OSError):
                    pipe.send(None)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """*items* dealt round-robin into *parts* non-empty lists (fewer if there are fewer)."""
    return [list(items[i::parts]) for i in range(min(parts, len(items)))]


def credentials(names_and_paths: Sequence[Any]) -> list[Credential]:
    """Picklable (name, cert, key) triples of objects with .name, .cert and .key."""
    return [(c.name, str(Path(c.cert)), str(Path(c.key))) for c in names_and_paths]
