"""Floods against Fleet and Mosquitto: what legitimate devices see while one runs.

    .venv/bin/python bench/flood.py [--quick] [--duration 10] [--rate N] [--floods a,b]
                                    [--systems fleet,mosquitto] [--out FILE]

Both systems get the same fleet CA, server certificate and device certificates (bench/fixture.py).
Fleet runs as `fleet up` (EST service and broker in one process), Mosquitto with the
configuration `fleet export mosquitto` writes (bench/systems.py). Every (flood, system) pair gets a
freshly started server; the floods run one at a time, Fleet then Mosquitto:

- baseline         no flood: the reference for the rows below
- hello-one        a genuine captured TLS ClientHello replayed on new TCP connections at 300/s
                   from one source address (127.0.0.2); the server's flight is read and
                   ignored, nothing else is sent, a socket is closed after 10 s (or when the
                   server closes it)
- hello-many       the same at 300/s spread over 50 source addresses (127.0.0.2-51)
- idle-tcp         2,000 TCP connections opened at 200/s from 50 source addresses, never sending
- real-handshakes  complete TLS handshakes without a client certificate (they fail) at 300/s
                   from 50 source addresses: the CPU cost of real handshakes
- est-slow         (Fleet only) 1,000 TLS connections to the EST port from 10 source addresses,
                   opened at 200/s, each sending `POST /.well-known/est/simpleenroll` headers with
                   `Content-Length: 5000` (and a well-formed Basic header with a made-up token,
                   so the server must wait for the body before it can refuse) and then nothing

While a flood runs, a legitimate device-connect loop in its own process (from 127.0.0.1, a
new mTLS handshake + CONNECT/CONNACK per attempt, client id = CN, a per-attempt timeout,
TCP_NODELAY unless --no-client-nodelay) measures success and latency; for Fleet in the
baseline and est-slow runs a second process also enrolls new devices over EST (token, fresh
key and CSR each) and polls /healthz. The
flooders run in their own processes (asyncio inside each); the probes start after a short
warm-up of the flood and the flood lasts until the last probe attempt has finished.

Reported per flood and system: probe attempts, success %, p50/p99 latency of the successful
attempts, server CPU (% of one core over the flood, /proc/<pid>/stat of the server's process
tree) and RSS (just before the flood, 1 s after it ended, peak sampled at 5 Hz); and, per
flood, what the flooders achieved. Loopback only; the run stops by itself, ends every process
it started (by PID) and removes its temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import json
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _measure import descendants, free_port, percentile, rss_kib, tree_cpu_seconds

HOST = "127.0.0.1"
FLEET = str(Path(sys.executable).parent / "fleet")
SYSTEMS = ("fleet", "mosquitto")
DEVICES = 100
EST_RATE = 2.0       # legitimate enrollments per second (and as many /healthz polls)
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the source port at connect(), not at bind()
DISCONNECT = b"\xe0\x00"
SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Flood:
    name: str
    kind: str                  # none | hello | idle | tls | est-slow
    sources: int = 1           # 127.0.0.2 .. 127.0.0.(1 + sources)
    rate: float = 0.0          # new connections per second
    count: int | None = None   # stop opening after this many (None: until the flood ends)
    hold: float | None = None  # close each after this long (None: at the end of the flood)
    processes: int = 1
    target: str = "mqtt"       # mqtt | est
    fleet_only: bool = False

    def source_addresses(self) -> list[str]:
        return [f"127.0.0.{2 + i}" for i in range(self.sources)]


FLOODS = (
    Flood("baseline", "none"),
    Flood("hello-one", "hello", sources=1, rate=300, hold=10.0),
    Flood("hello-many", "hello", sources=50, rate=300, hold=10.0),
    Flood("idle-tcp", "idle", sources=50, rate=200, count=2000),
    Flood("real-handshakes", "tls", sources=50, rate=300, processes=2),
    Flood("est-slow", "est-slow", sources=10, rate=200, count=1000, processes=2,
          target="est", fleet_only=True),
)


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_hello() -> bytes:
    """A complete, genuine TLS ClientHello (as tests/broker/test_limits.py makes one)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return f"ssl:{exc.reason or type(exc).__name__}"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    if isinstance(exc, ConnectionResetError):  # asyncio's "Connection lost" has no errno
        return "ECONNRESET"
    return type(exc).__name__


# -- flooders (each its own process, asyncio inside) ------------------------------------------


@dataclass
class FloodStats:
    launched: int = 0
    connected: int = 0
    connect_errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    server_closed: int = 0
    close_after: list[float] = field(default_factory=list)  # connect -> server close, s
    open_now: int = 0
    peak_open: int = 0
    wall: float = 0.0
    connecting_span: float = 0.0  # flood start -> the last connection established, s
    started: float = field(default_factory=time.monotonic)

    def opened(self) -> None:
        self.connected += 1
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        self.connecting_span = time.monotonic() - self.started


def flooder(pipe: Connection, spec: dict[str, Any]) -> None:
    """Child process: wait for "go", flood until "stop" (or the safety deadline), report."""
    raise_open_files_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it
    pipe.send("ready")
    if pipe.recv() != "go":
        return
    pipe.send(asyncio.run(_flood(pipe, spec)))


async def _flood(pipe: Connection, spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_message() -> None:
        loop.remove_reader(pipe.fileno())
        with contextlib.suppress(EOFError, OSError):
            pipe.recv()
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(pipe.fileno(), on_message)
    stats = FloodStats()
    tasks: set[asyncio.Task[None]] = set()
    sources, rate, count = spec["sources"], spec["rate"], spec["count"]
    parent, started = os.getppid(), stats.started
    while not stop.done() and os.getppid() == parent:
        elapsed = time.monotonic() - started
        if elapsed > spec["max_seconds"]:
            break
        due = int(elapsed * rate) + 1
        if count is not None:
            due = min(due, count)
        while stats.launched < due:
            task = loop.create_task(_attack(spec, sources[stats.launched % len(sources)],
                                            stats, stop))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stats.launched += 1
        await asyncio.wait([stop], timeout=0.005)
    stats.wall = time.monotonic() - started
    if not stop.done():
        stop.set_result(None)
    if tasks:
        await asyncio.wait(list(tasks), timeout=3)
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(pipe.fileno())
    stats.close_after.sort()
    return {**stats.__dict__, "connect_errors": dict(stats.connect_errors),
            "outcomes": dict(stats.outcomes)}


def _raw_socket(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    # close with RST: the flooder leaves no TIME_WAIT behind to exhaust its ports
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))
    return sock


async def _attack(spec: dict[str, Any], source: str, stats: FloodStats,
                  stop: asyncio.Future[None]) -> None:
    loop = asyncio.get_running_loop()
    sock = _raw_socket(source)
    connected_at: float | None = None
    deadline = (time.monotonic() + spec["hold"]) if spec["hold"] else float("inf")
    try:
        connect = loop.create_task(loop.sock_connect(sock, (HOST, spec["port"])))
        done, _ = await asyncio.wait([connect, stop], timeout=10.0,
                                     return_when=asyncio.FIRST_COMPLETED)
        if connect not in done:
            connect.cancel()
            if not stop.done():
                stats.connect_errors["connect timeout (10 s)"] += 1
            return
        try:
            connect.result()
        except OSError as exc:
            stats.connect_errors[_outcome(exc)] += 1
            return
        connected_at = time.monotonic()
        stats.opened()
        if spec["kind"] in ("tls", "est-slow"):
            await _tls_attack(spec, sock, stats, stop, connected_at, deadline)
            sock = None  # the transport owns it now
            return
        if spec["kind"] == "hello":
            await loop.sock_sendall(sock, spec["hello"])
        await _hold(sock, stats, stop, connected_at, deadline)
    except OSError as exc:
        stats.outcomes[_outcome(exc)] += 1
    finally:
        if connected_at is not None:
            stats.open_now -= 1
        if sock is not None:
            sock.close()


async def _hold(sock: socket.socket, stats: FloodStats, stop: asyncio.Future[None],
                connected_at: float, deadline: float) -> None:
    """Read and ignore until the server closes, *deadline* passes or the flood stops."""
    loop = asyncio.get_running_loop()
    while not stop.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        receive = loop.create_task(loop.sock_recv(sock, 65536))
        done, _ = await asyncio.wait([receive, stop], timeout=min(remaining, 3600),
                                     return_when=asyncio.FIRST_COMPLETED)
        if receive not in done:
            receive.cancel()
            return
        try:
            data = receive.result()
        except OSError as exc:  # ECONNRESET: closed by the server too
            stats.server_closed += 1
            stats.close_after.append(time.monotonic() - connected_at)
            stats.outcomes[f"server {_outcome(exc)}"] += 1
            return
        if not data:
            stats.server_closed += 1
            stats.close_after.append(time.monotonic() - connected_at)
            return


async def _tls_attack(spec: dict[str, Any], sock: socket.socket, stats: FloodStats,
                      stop: asyncio.Future[None], connected_at: float, deadline: float) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname="localhost", ssl_handshake_timeout=10)
    except (OSError, TimeoutError) as exc:
        stats.outcomes[f"handshake {_outcome(exc)}"] += 1
        stats.server_closed += 1
        stats.close_after.append(time.monotonic() - connected_at)
        sock.close()
        return
    try:
        if spec["kind"] == "tls":  # what the server does after the handshake (TLS 1.3: alert)
            try:
                data = await asyncio.wait_for(reader.read(4096), 2.0)
                stats.outcomes["handshake ok, then " + ("data" if data else "EOF")] += 1
            except TimeoutError:
                stats.outcomes["handshake ok, then nothing for 2 s"] += 1
                return
            except (OSError, asyncio.IncompleteReadError) as exc:
                stats.outcomes[f"handshake ok, then {_outcome(exc)}"] += 1
            stats.server_closed += 1
            stats.close_after.append(time.monotonic() - connected_at)
            return
        # a well-formed Basic header with a made-up token: the server has to wait for the
        # body before it can check the token (without one, Fleet answers 401 at once)
        fake = f"flood-{secrets.token_hex(4)}:{secrets.token_hex(8)}.{secrets.token_urlsafe(24)}"
        writer.write(spec["request"] + b"Authorization: Basic "
                     + base64.b64encode(fake.encode()) + b"\r\n\r\n")
        while not stop.done():
            receive = asyncio.ensure_future(reader.read(4096))
            done, _ = await asyncio.wait([receive, stop], timeout=min(
                deadline - time.monotonic(), 3600), return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                return
            try:
                data = receive.result()
            except (OSError, asyncio.IncompleteReadError) as exc:
                data, reason = b"", _outcome(exc)
                stats.outcomes[f"server {reason}"] += 1
            if data.startswith(b"HTTP/"):
                stats.outcomes["reply " + data.split(b"\r\n", 1)[0][9:].decode(
                    errors="replace")] += 1
            if not data:
                stats.server_closed += 1
                stats.close_after.append(time.monotonic() - connected_at)
                return
    finally:
        writer.transport.abort()


# -- legitimate probes (each its own process, blocking sockets in threads) ------------------


def _connect_packet(client_id: str) -> bytes:
    name = client_id.encode()
    body = (b"\x00\x04MQTT\x04\x02\x00\x00" + len(name).to_bytes(2, "big") + name)
    return b"\x10" + bytes((len(body),)) + body  # short client ids: one length byte


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _recv_exactly(sock: ssl.SSLSocket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "closed before CONNACK")
        data += chunk
    return data


Result = tuple[str, str, float]  # (probe, outcome, seconds); outcome "ok" is a success


def _paced(rate: float, duration: float, timeout: float,
           attempt: Any, kinds: list[tuple[str, float]]) -> list[Result]:
    """Start attempt(kind, index) at *rate* per kind for *duration*; wait for them all."""
    futures: list[Future[Result]] = []
    workers = int(sum(r for _, r in kinds) * (timeout + 1)) + 8
    with ThreadPoolExecutor(workers) as pool:
        started = time.monotonic()
        launched = dict.fromkeys([k for k, _ in kinds], 0)
        while (elapsed := time.monotonic() - started) < duration:
            for kind, kind_rate in kinds:
                while launched[kind] < int(elapsed * kind_rate) + 1:
                    futures.append(pool.submit(attempt, kind, launched[kind]))
                    launched[kind] += 1
            time.sleep(0.005)
    return [f.result() for f in futures]


def device_probe(pipe: Connection, port: int, chain: str, devices: list[tuple[str, str, str]],
                 rate: float, timeout: float, nodelay: bool) -> None:
    """Child process: paced device connects (mTLS + CONNECT/CONNACK), one result each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    contexts = []
    for name, cert, key in devices:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(chain)
        context.load_cert_chain(cert, key)
        contexts.append((name, context))

    def attempt(kind: str, index: int) -> Result:
        name, context = contexts[index % len(contexts)]
        started = time.monotonic()
        deadline = started + timeout
        try:
            with socket.create_connection((HOST, port), timeout=timeout) as raw:
                if nodelay:
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.settimeout(_remaining(deadline))
                with context.wrap_socket(raw, server_hostname=HOST) as tls:
                    tls.settimeout(_remaining(deadline))
                    tls.sendall(_connect_packet(name))
                    connack = _recv_exactly(tls, 4, deadline)
                    elapsed = time.monotonic() - started
                    with contextlib.suppress(OSError):
                        tls.sendall(DISCONNECT)
            if connack[0] != 0x20 or connack[3] != 0:
                return kind, f"CONNACK {connack.hex()}", elapsed
            return kind, "ok", elapsed
        except Exception as exc:
            return kind, _outcome(exc), time.monotonic() - started

    pipe.send("ready")
    duration = pipe.recv()
    pipe.send(_paced(rate, duration, timeout, attempt, [("device connect", rate)]))


def est_probe(pipe: Connection, port: int, ca: str, tokens: list[str], rate: float,
              timeout: float, tag: str, nodelay: bool) -> None:
    """Child process: paced token enrollments (fresh key + CSR each) and /healthz polls."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    context = ssl.create_default_context(cafile=ca)
    health = (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")

    def enrollment(index: int) -> bytes:
        device_id = f"flood-{tag}-{index:05d}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).sign(
            key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        body = base64.encodebytes(csr).replace(b"\n", b"\r\n")
        basic = base64.b64encode(f"{device_id}:{tokens[index % len(tokens)]}".encode()).decode()
        head = ["POST /.well-known/est/simpleenroll HTTP/1.1", "Host: localhost",
                "Content-Type: application/pkcs10", f"Content-Length: {len(body)}",
                "Connection: close", f"Authorization: Basic {basic}"]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def attempt(kind: str, index: int) -> Result:
        request = enrollment(index) if kind == "EST enroll" else health
        started = time.monotonic()  # after the CSR is made: the latency is the service's
        deadline = started + timeout
        try:
            with socket.create_connection((HOST, port), timeout=timeout) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, nodelay)
                raw.settimeout(_remaining(deadline))
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.settimeout(_remaining(deadline))
                    tls.sendall(request)
                    reply = b""
                    while True:
                        tls.settimeout(_remaining(deadline))
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        reply += chunk
            status = reply[9:12].decode(errors="replace") or "empty reply"
            return kind, "ok" if status == "200" else f"HTTP {status}", time.monotonic() - started
        except Exception as exc:
            return kind, _outcome(exc), time.monotonic() - started

    pipe.send("ready")
    duration = pipe.recv()
    pipe.send(_paced(rate, duration, timeout, attempt, [("EST enroll", rate),
                                                        ("EST /healthz", rate)]))


# -- the servers -------------------------------------------------------------------------------


class Children:
    """Every child process this run started, ended by PID however the run ends."""

    def __init__(self) -> None:
        self.processes: list[Any] = []

    def spawn(self, target: Any, *args: Any) -> tuple[Any, Connection]:
        parent, child = SPAWN.Pipe()
        process = SPAWN.Process(target=target, args=(child, *args), daemon=True)
        process.start()
        child.close()
        self.processes.append(process)
        return process, parent

    def end_all(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        self.processes.clear()


class RssSampler(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, rss_kib(pids), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, rss_kib(self.pids))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, rss_kib(self.pids))


@dataclass
class Setup:
    fixture: Any
    tokens: list[str]
    hello: bytes
    args: argparse.Namespace
    children: Children
    token_cursor: int = 0


def start_system(name: str, setup: Setup) -> tuple[Any, int | None]:
    """A fresh server process; returns it and the EST port (Fleet only)."""
    from systems import Server, mosquitto

    log = setup.fixture.work / f"{name}.log"
    if name == "mosquitto":
        return _start(mosquitto(setup.fixture), log), None
    mqtt_port, est_port = free_port(), free_port()
    server = Server("fleet", [FLEET, "up", "--est-port", str(est_port), "--mqtt-port",
                              str(mqtt_port)], mqtt_port, env=setup.fixture.env)
    return _start(server, log), est_port


def _start(server: Any, log: Path) -> Any:
    try:
        return server.start(log)
    except RuntimeError as exc:
        server.stop()
        raise RuntimeError(str(exc).replace("|", "/")) from None


def warm_up(port: int, setup: Setup) -> None:
    device = setup.fixture.devices[0]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(setup.fixture.chain))
    context.load_cert_chain(str(device.cert), str(device.key))
    for _ in range(3):
        deadline = time.monotonic() + 10
        with socket.create_connection((HOST, port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=HOST) as tls:
            tls.sendall(_connect_packet(device.name))
            if _recv_exactly(tls, 4, deadline)[3] != 0:
                raise RuntimeError("warm-up connect refused")
            tls.sendall(DISCONNECT)


# -- one flood against one system ----------------------------------------------------------


@dataclass
class Run:
    system: str
    flood: Flood
    results: list[Result] = field(default_factory=list)
    cpu_percent: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    flooders: list[dict[str, Any]] = field(default_factory=list)
    flooder_cpu: float = 0.0
    note: str = ""


def _recv(pipe: Connection, timeout: float, what: str) -> Any:
    if not pipe.poll(timeout):
        raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")
    return pipe.recv()


def run_flood(system: str, flood: Flood, setup: Setup) -> Run:
    args, fixture, children = setup.args, setup.fixture, setup.children
    run = Run(system, flood)
    broker, est_port = start_system(system, setup)
    try:
        warm_up(broker.port, setup)
        pids = descendants(broker.pid)
        devices = [(d.name, str(d.cert), str(d.key)) for d in fixture.devices]
        probes = [children.spawn(device_probe, broker.port, str(fixture.chain), devices,
                                 args.legit_rate, args.timeout, args.client_nodelay)]
        if est_port is not None and flood.kind in ("none", "est-slow"):
            need = int(EST_RATE * args.duration) + 2
            tokens = setup.tokens[setup.token_cursor:setup.token_cursor + need]
            setup.token_cursor += need
            probes.append(children.spawn(est_probe, est_port, str(fixture.chain), tokens,
                                         EST_RATE, args.timeout, flood.name,
                                         args.client_nodelay))
        flooders = []
        if flood.kind != "none":
            port = est_port if flood.target == "est" else broker.port
            sources = flood.source_addresses()
            max_seconds = args.warmup + args.duration + args.timeout + 30
            for index in range(flood.processes):
                mine = sources[index::flood.processes] or sources
                spec = {"kind": flood.kind, "port": port, "sources": mine,
                        "rate": flood.rate / flood.processes,
                        "count": None if flood.count is None else
                        -(-flood.count // flood.processes),
                        "hold": flood.hold, "max_seconds": max_seconds,
                        "hello": setup.hello,
                        "request": (b"POST /.well-known/est/simpleenroll HTTP/1.1\r\n"
                                    b"Host: localhost\r\nContent-Type: application/pkcs10\r\n"
                                    b"Content-Length: 5000\r\n")}
                flooders.append(children.spawn(flooder, spec))
        for process, pipe in probes + flooders:
            if _recv(pipe, 60, f"child {process.pid}") != "ready":
                raise RuntimeError(f"child {process.pid} did not start")
        time.sleep(0.5)  # the children's own start-up CPU is over
        run.rss_before = rss_kib(pids)
        sampler = RssSampler(pids)
        sampler.start()
        cpu, started = tree_cpu_seconds(pids), time.monotonic()
        for _, pipe in flooders:
            pipe.send("go")
        if flooders:
            time.sleep(args.warmup)
        for _, pipe in probes:
            pipe.send(args.duration)
        for _, pipe in probes:
            run.results += _recv(pipe, args.duration + args.timeout + 60, "probe")
        run.flooder_cpu = tree_cpu_seconds([p.pid for p, _ in flooders])
        for _, pipe in flooders:
            pipe.send("stop")
        for _, pipe in flooders:
            run.flooders.append(_recv(pipe, 30, "flooder"))
        used, wall = tree_cpu_seconds(pids) - cpu, time.monotonic() - started
        run.cpu_percent = 100 * used / wall
        time.sleep(1.0)
        run.rss_peak = sampler.stop()
        run.rss_after = rss_kib(pids)
        if broker.process.poll() is not None:
            run.note = f"{system} exited (code {broker.process.returncode}) during the flood"
    finally:
        children.end_all()
        broker.stop()
    return run


# -- report -----------------------------------------------------------------------------------


def _ms(values: list[float], fraction: float) -> str:
    return f"{1000 * percentile(values, fraction):.1f}" if values else "-"


def _mb(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def report(runs: list[Run], args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        f"## bench/flood.py: {time.strftime('%Y-%m-%d %H:%M')}, duration {args.duration:g} s, "
        f"legitimate connects {args.legit_rate:g}/s, per-attempt timeout {args.timeout:g} s, "
        f"probe TCP_NODELAY {'on' if args.client_nodelay else 'off'}; Fleet from "
        f"{args.fleet_source}"
        f"{', --quick' if args.quick else ''}",
        "",
        "| system | flood | probe | attempts | success % | p50 ms | p99 ms | broker CPU % "
        "| RSS MB before / after / peak |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    failures = []
    for run in runs:
        if not run.results and run.note:
            lines.append(f"| {run.system} | {run.flood.name} | {run.note} | - | - | - | - | - "
                         "| - |")
            continue
        probes = sorted({probe for probe, _, _ in run.results}, key=lambda p: (p != "device "
                                                                               "connect", p))
        for probe in probes:
            mine = [(o, s) for p, o, s in run.results if p == probe]
            ok = [s for o, s in mine if o == "ok"]
            lines.append(
                f"| {run.system} | {run.flood.name} | {probe} | {len(mine)} "
                f"| {100 * len(ok) / len(mine):.1f} | {_ms(ok, 0.5)} | {_ms(ok, 0.99)} "
                f"| {run.cpu_percent:.0f} | {_mb(run.rss_before)} / {_mb(run.rss_after)} / "
                f"{_mb(run.rss_peak)} |")
            bad = Counter(o for o, _ in mine if o != "ok")
            if bad:
                failures.append(f"- {run.system} / {run.flood.name} / {probe}: "
                                + ", ".join(f"{k} x{v}" for k, v in bad.most_common()))
        if run.note:
            failures.append(f"- {run.system} / {run.flood.name}: {run.note}")
    lines += ["", "Latency percentiles are over the successful attempts. Broker CPU: % of one "
              "core over the flood (server process tree); RSS: just before the flood, 1 s "
              "after it ended, peak sampled at 5 Hz.", ""]
    if failures:
        lines += ["Failed probe attempts:", "", *failures, ""]
    lines += ["### What the flooders achieved", "",
              "| system | flood | launched | connected | per s | peak open | closed by server "
              "| close after p50 / p90 s | flooder CPU s | connect errors / outcomes |",
              "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for run in runs:
        if not run.flooders:
            continue
        total: Counter[str] = Counter()
        for key in ("launched", "connected", "server_closed", "peak_open"):
            total[key] = sum(f[key] for f in run.flooders)
        span = max(f["connecting_span"] for f in run.flooders)
        closes = sorted(t for f in run.flooders for t in f["close_after"])
        errors: Counter[str] = Counter()
        for f in run.flooders:
            errors.update({f"connect {k}": v for k, v in f["connect_errors"].items()})
            errors.update(f["outcomes"])
        close = (f"{percentile(closes, 0.5):.2f} / {percentile(closes, 0.9):.2f}"
                 if closes else "-")
        lines.append(
            f"| {run.system} | {run.flood.name} | {total['launched']} | {total['connected']} "
            f"| {total['connected'] / span if span else 0:.0f} | {total['peak_open']} "
            f"| {total['server_closed']} | {close} | {run.flooder_cpu:.1f} "
            f"| {', '.join(f'{k} x{v}' for k, v in errors.most_common(6)) or '-'} |")
    lines += ["", "`per s`: connections established per second, from the flood's start to the "
              "last one established; `peak open` the "
              "most held at once (summed over flooder processes); `close after` the time from "
              "connect to the server closing it.", "", f"total {elapsed:.0f} s", ""]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def mint_tokens(fixture: Any, count: int) -> list[str]:
    subprocess.run([FLEET, "group", "create", "flood"], env=fixture.env, capture_output=True,
                   text=True, timeout=60, check=True)
    out = subprocess.run([FLEET, "token", "create", "--group", "flood", "--count", str(count),
                          "--json"], env=fixture.env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [row["token"] for row in json.loads(out)]


def snapshot_fleet(rev: str | None, work: Path) -> tuple[Path, str]:
    """Copy the code Fleet runs from (fleet/, provisioning/, config/) into *work*, so that a
    run measures one version even while others edit the tree; returns it and a label."""
    root = Path(__file__).resolve().parent.parent
    dest = work / "src"
    dest.mkdir()
    parts = ("fleet", "provisioning", "config")
    git = ["git", "-C", str(root)]
    if rev:
        archive = subprocess.run([*git, "archive", rev, *parts], capture_output=True,
                                 check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
        label = subprocess.run([*git, "rev-parse", "--short", rev], capture_output=True,
                               text=True, check=True).stdout.strip()
        return dest, f"commit {label}"
    for part in parts:
        shutil.copytree(root / part, dest / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", *parts], capture_output=True,
                           text=True).stdout.strip()
    edits = len(dirty.splitlines())
    return dest, (f"working tree at {time.strftime('%H:%M:%S')} (HEAD {head}"
                  f"{f' + {edits} changed files' if edits else ''})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="probe window per flood, s (10)")
    parser.add_argument("--rate", type=float, help="override every flood's connection rate")
    parser.add_argument("--floods", default=",".join(f.name for f in FLOODS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--legit-rate", type=float, help="legitimate connects per second (20)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-attempt timeout, s")
    parser.add_argument("--no-client-nodelay", dest="client_nodelay", action="store_false",
                        help="leave Nagle on in the probes (as paho does): Fleet's CONNACK then "
                        "waits ~40 ms for a delayed ACK, since it sends no session ticket")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s floods, fewer "
                        "connections")
    parser.add_argument("--fleet-rev", help="run Fleet from this git revision (default: a "
                        "copy of the working tree taken at the start)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.legit_rate = args.legit_rate or (10.0 if args.quick else 20.0)
    args.warmup = 0.5 if args.quick else 1.0
    chosen = args.floods.split(",")
    unknown = set(chosen) - {f.name for f in FLOODS}
    if unknown:
        parser.error(f"unknown flood(s): {', '.join(sorted(unknown))}")
    floods = [f for f in FLOODS if f.name in chosen]
    if args.rate:
        floods = [replace(f, rate=args.rate) if f.rate else f for f in floods]
    if args.quick:
        floods = [replace(f, hold=f.hold and min(f.hold, 3.0),
                          count=f.count and f.count * 3 // 10) for f in floods]
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]

    def terminate(_signum: int, _frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    raise_open_files_limit()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fleet-flood-bench-"))
    children = Children()
    runs: list[Run] = []
    try:
        source, args.fleet_source = snapshot_fleet(args.fleet_rev, work)
        sys.path.insert(0, str(source))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(source), os.environ.get("PYTHONPATH")) if p)
        print(f"Fleet from {args.fleet_source}", file=sys.stderr, flush=True)
        from fixture import provision

        print(f"provisioning {DEVICES} devices in {work}", file=sys.stderr, flush=True)
        fixture = provision(DEVICES, work)
        probed = sum(1 for f in floods if f.kind in ("none", "est-slow"))
        tokens = mint_tokens(fixture, max(1, probed * (int(EST_RATE * args.duration) + 2)))
        setup = Setup(fixture, tokens, client_hello(), args, children)
        for flood in floods:
            for system in systems:
                if flood.fleet_only and system != "fleet":
                    runs.append(Run(system, flood, note="n/a (no EST service)"))
                    continue
                print(f"[{system}] {flood.name}", file=sys.stderr, flush=True)
                try:
                    runs.append(run_flood(system, flood, setup))
                except (RuntimeError, OSError, EOFError) as exc:
                    print(f"  failed: {exc}", file=sys.stderr, flush=True)
                    runs.append(Run(system, flood, note=f"failed: {exc}"))
        text = report(runs, args, time.monotonic() - started)
        print(text)
        if args.out:
            args.out.write_text(text)
    finally:
        children.end_all()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
