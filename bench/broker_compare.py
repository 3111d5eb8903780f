"""Fleet's broker side by side with Mosquitto and stock amqtt, on one workload, in one run.

    .venv/bin/python bench/broker_compare.py [--sessions 1000,5000] [--profile]

Every broker runs as its own process on 127.0.0.1 with the same fleet CA and server
certificate; every client does mutual TLS with its own EC P-256 device certificate and uses
its identity as client id:

- fleet      `fleet serve broker` (gate, registry admission, topic policy, watcher)
- mosquitto  Debian's mosquitto: require_certificate, use_identity_as_username, crlfile,
             pattern ACL, set_tcp_nodelay (the configuration a careful operator writes)
- amqtt      stock amqtt 0.12.1: TLS listener, anonymous auth plugin only (no ACL, no $SYS)

Measured per broker (broker CPU from /proc/<pid>/stat before and after each phase):
connects per broker-CPU-second; broker CPU per QoS 0 and per QoS 1 message (devices publish
to their own telemetry topic, one service subscribes to devices/+/telemetry); RSS per idle
session (each connected and subscribed to its command topic) at 1k and 5k sessions; and, with
the sessions still connected, revocation-to-disconnect latency (Mosquitto never drops a live
session: checked after rewriting its CRL and SIGHUP). With --profile, Fleet's broker is also
run under cProfile for a connect phase and a message phase.

Devices are provisioned in bulk straight into the registry (the certificates are the ones
the Authority issues); this setup is not measured. Loopback only; the run stops by itself and
only ever signals the processes it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from _measure import cpu_seconds, free_port

from fleet import pki
from fleet.authority import Authority
from fleet.broker.packets import encode_length, publish
from fleet.ca import Paths, ensure_server_certificate, init_ca
from fleet.pki import Identity
from fleet.registry import DeviceStatus, make_engine, migrate, utcnow
from fleet.registry import devices as devices_db
from fleet.settings import Settings, load_settings

PYTHON = sys.executable
FLEET = str(Path(sys.executable).parent / "fleet")
PAYLOAD = bytes(range(64))
CONNECTS = 400
CONNECT_CONCURRENCY = 8
QOS0_MESSAGES, QOS0_RATE = 10_000, 2_000
QOS1_MESSAGES, QOS1_RATE = 6_000, 1_500
PUBLISHERS = 10
REVOCATIONS = 30
OPEN_CONCURRENCY = 24
SESSIONS_BUDGET = 90.0
PHASE_TIMEOUT = 120.0
BROKERS = ("fleet", "mosquitto", "amqtt")


# -- setup -----------------------------------------------------------------------------------


@dataclass
class Device:
    name: str
    cert: Path
    key: Path
    serial: str
    _context: ssl.SSLContext | None = None

    def context(self, chain: Path) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(str(chain))
            context.load_cert_chain(str(self.cert), str(self.key))
            self._context = context
        return self._context


@dataclass
class Fixture:
    work: Path
    settings: Settings
    authority: Authority
    devices: list[Device]
    service: Device
    chain: Path
    crl: Path
    env: dict[str, str]


def provision(count: int, work: Path) -> Fixture:
    env = {**os.environ, "FLEET_DATA_DIR": str(work / "data"),
           "FLEET_CA_PASSPHRASE": "bench-only-passphrase"}
    os.environ["FLEET_CA_PASSPHRASE"] = env["FLEET_CA_PASSPHRASE"]
    settings = load_settings(environ=env)
    ca, _ = init_ca(settings, now=utcnow())
    ensure_server_certificate(settings, ca, now=utcnow())
    engine = make_engine(settings.effective_database_url, create=True)
    migrate(engine)
    authority = Authority(settings=settings, engine=engine, ca=ca)
    keys_dir = work / "clients"
    keys_dir.mkdir()
    devices = []
    now = utcnow()
    with authority.transaction() as session:  # one transaction for the whole fleet
        for index in range(count):
            name = f"dev-{index:05d}"
            key = pki.generate_private_key("p256")
            devices_db.create_device(session=session, device_id=name, group="bench",
                                     status=DeviceStatus.ACTIVE, now=now)
            cert = authority._sign(Identity("device", name), key.public_key(),
                                   settings.device_lifetime, now)
            record = authority._record(session, cert, Identity("device", name), now)
            devices.append(_write(keys_dir, name, key, cert, record.serial))
    service_key = pki.generate_private_key("p256")
    issued = authority.issue_service_certificate(name="ingest", public_key=service_key.public_key(),
                                                 actor="bench")
    service = _write(keys_dir, "ingest", service_key, issued.certificate, issued.record.serial)
    crl = work / "crl.pem"
    write_crl(authority, crl)
    return Fixture(work=work, settings=settings, authority=authority, devices=devices,
                   service=service, chain=Paths.of(settings).chain, crl=crl, env=env)


def _write(directory: Path, name: str, key: pki.PrivateKey, cert: Any, serial: str) -> Device:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(pki.private_key_pem(key))
    cert_path.write_text(pki.certificate_pem(cert))
    return Device(name, cert_path, key_path, serial)


def write_crl(authority: Authority, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(authority.current_crl().public_bytes(serialization.Encoding.PEM))


# -- broker processes ------------------------------------------------------------------------


MOSQUITTO_ACL = """\
pattern write devices/%u/telemetry
pattern write devices/%u/events/#
pattern write devices/%u/state
pattern read devices/%u/commands/#
pattern read groups/bench/broadcast/#

user ingest
topic read devices/+/telemetry
topic read devices/+/events/#
topic read devices/+/state
topic write devices/+/commands/#
topic write groups/+/broadcast/#
"""


@dataclass
class Broker:
    name: str
    command: list[str]
    port: int
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> None:
        with log.open("wb") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {self.port}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # cProfile writes its file on a clean exit
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def fleet_broker(fixture: Fixture, *, profile: Path | None = None) -> Broker:
    port = free_port()
    command = [FLEET, "serve", "broker", "--port", str(port)]
    if profile is not None:
        command = [PYTHON, __file__, "--run-profiled-fleet", f"{port}:{profile}"]
    return Broker("fleet", command, port, env=fixture.env)


def run_profiled_fleet(argument: str) -> None:
    """Entry point of a Fleet broker process profiled (main thread CPU) while serving."""
    import cProfile
    import logging

    from fleet.broker.server import start

    port, output = argument.split(":", 1)
    logging.getLogger("amqtt").setLevel(logging.ERROR)

    async def main() -> None:
        server = await start(load_settings(), host="127.0.0.1", port=int(port))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        await stop.wait()
        profiler.disable()
        profiler.dump_stats(output)
        await server.close()

    asyncio.run(main())


def mosquitto_broker(fixture: Fixture) -> Broker:
    port = free_port()
    paths = Paths.of(fixture.settings)
    acl = fixture.work / "mosquitto.acl"
    acl.write_text(MOSQUITTO_ACL)
    conf = fixture.work / "mosquitto.conf"
    conf.write_text(
        f"user root\npersistence false\nlog_dest none\nper_listener_settings false\n"
        f"allow_anonymous false\nmax_queued_messages 1000\nacl_file {acl}\n"
        f"listener {port} 127.0.0.1\ncafile {paths.chain}\ncertfile {paths.server_cert}\n"
        f"keyfile {paths.server_key}\nrequire_certificate true\n"
        f"use_identity_as_username true\ncrlfile {fixture.crl}\nset_tcp_nodelay true\n")
    return Broker("mosquitto", ["mosquitto", "-c", str(conf)], port)


def amqtt_broker(fixture: Fixture) -> Broker:
    port = free_port()
    paths = Paths.of(fixture.settings)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "ssl": True,
                                  "cafile": str(paths.chain), "certfile": str(paths.server_cert),
                                  "keyfile": str(paths.server_key)}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }
    return Broker("amqtt", [PYTHON, __file__, "--run-amqtt", json.dumps(config)], port)


def run_stock_amqtt(config: str) -> None:
    """Entry point of the stock amqtt process."""
    import logging

    from amqtt.broker import Broker as AmqttBroker

    logging.disable(logging.WARNING)

    async def main() -> None:
        broker = AmqttBroker(json.loads(config))
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


# -- a minimal MQTT 3.1.1 client (asyncio, mutual TLS) -----------------------------------------


def _text(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, *, keep_alive: int = 0) -> bytes:
    body = _text("MQTT") + bytes((4, 0x02)) + keep_alive.to_bytes(2, "big") + _text(client_id)
    return b"\x10" + encode_length(len(body)) + body


def subscribe_packet(topic_filter: str, qos: int, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _text(topic_filter) + bytes((qos,))
    return b"\x82" + encode_length(len(body)) + body


DISCONNECT = b"\xe0\x00"


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


class Client:
    """One MQTT connection; closed.is_set() once the broker closed it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed = asyncio.Event()

    @classmethod
    async def open(cls, port: int, device: Device, chain: Path, *,
                   client_id: str | None = None) -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=device.context(chain), server_hostname="127.0.0.1")
        client = cls(reader, writer)
        writer.write(connect_packet(client_id or device.name))
        kind, body = await read_packet(reader)
        if kind != 0x20 or body[1] != 0:
            writer.close()
            raise ConnectionRefusedError(f"{device.name}: CONNACK {body!r}")
        return client

    async def subscribe(self, topic_filter: str, qos: int) -> None:
        self.writer.write(subscribe_packet(topic_filter, qos))
        kind, body = await read_packet(self.reader)
        if kind != 0x90 or body[2] == 0x80:
            raise RuntimeError(f"SUBSCRIBE {topic_filter} refused")

    async def watch(self) -> None:
        """Read until the broker closes the connection."""
        try:
            while await self.reader.read(4096):
                pass
        except (OSError, ssl.SSLError):
            pass
        self.closed.set()

    async def close(self) -> None:
        try:
            self.writer.write(DISCONNECT)
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (OSError, ssl.SSLError, TimeoutError):
            pass


async def bounded(jobs: Sequence[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    semaphore = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


# -- phases ------------------------------------------------------------------------------------


@dataclass
class Result:
    connects_per_cpu_second: float = 0.0
    connects_per_second: float = 0.0
    qos0_us: float = 0.0
    qos0_delivered: str = ""
    qos1_us: float = 0.0
    qos1_delivered: str = ""
    rss_kib: dict[int, float] = field(default_factory=dict)
    sessions: dict[int, int] = field(default_factory=dict)
    revocation_ms: list[float] = field(default_factory=list)
    revocation_note: str = ""


async def measure_connects(broker: Broker, fixture: Fixture, count: int) -> tuple[float, float]:
    devices = [fixture.devices[i % len(fixture.devices)] for i in range(count)]

    async def cycle(device: Device) -> None:
        client = await Client.open(broker.port, device, fixture.chain)
        await client.close()

    await bounded([partial(cycle, d) for d in devices[:20]], CONNECT_CONCURRENCY)  # warm-up
    await asyncio.sleep(0.5)
    cpu, wall = broker.cpu(), time.perf_counter()
    await bounded([partial(cycle, d) for d in devices], CONNECT_CONCURRENCY)
    wall = time.perf_counter() - wall
    await asyncio.sleep(0.5)
    used = broker.cpu() - cpu
    return count / used, count / wall


async def measure_messages(broker: Broker, fixture: Fixture, *, qos: int, total: int,
                           rate: int) -> tuple[float, str]:
    """Broker CPU microseconds per message published once and delivered once."""
    sink = await Client.open(broker.port, fixture.service, fixture.chain)
    await sink.subscribe("devices/+/telemetry", qos)
    publishers = [await Client.open(broker.port, d, fixture.chain)
                  for d in fixture.devices[:PUBLISHERS]]
    received = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal received
        while received < total:
            kind, body = await read_packet(sink.reader)
            if kind >> 4 != 3:
                continue
            received += 1
            if (kind >> 1) & 3:
                topic_length = int.from_bytes(body[:2], "big")
                sink.writer.write(b"\x40\x02" + body[2 + topic_length:4 + topic_length])
        done.set()

    async def produce(client: Client, topic: str, count: int) -> None:
        acks = asyncio.Semaphore(20)

        async def read_acks() -> None:
            while True:
                await read_packet(client.reader)
                acks.release()

        reader = asyncio.create_task(read_acks()) if qos else None
        interval, per_tick = 0.01, max(1, rate // PUBLISHERS // 100)
        sent, packet_id = 0, 0
        next_tick = time.perf_counter()
        while sent < count:
            for _ in range(min(per_tick, count - sent)):
                if qos:
                    await acks.acquire()
                    packet_id = packet_id % 65535 + 1
                client.writer.write(publish(topic, PAYLOAD, qos=qos, packet_id=packet_id))
                sent += 1
            next_tick += interval
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
        if reader is not None:
            for _ in range(20):
                await acks.acquire()
            reader.cancel()

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    cpu = broker.cpu()
    share = total // PUBLISHERS
    await asyncio.gather(*(produce(c, f"devices/{d.name}/telemetry", share)
                           for c, d in zip(publishers, fixture.devices, strict=False)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 30)
    used = broker.cpu() - cpu
    consumer.cancel()
    delivered = f"{received}/{total}"
    for client in [sink, *publishers]:
        await client.close()
    return used / max(received, 1) * 1e6, delivered


async def open_sessions(broker: Broker, fixture: Fixture, devices: Sequence[Device],
                        deadline: float) -> list[Client]:
    """Connect *devices*, each subscribed to its command topic, until *deadline*."""
    async def start(device: Device) -> Client | None:
        if time.monotonic() > deadline:
            return None
        client = await Client.open(broker.port, device, fixture.chain)
        await client.subscribe(f"devices/{device.name}/commands/#", 1)
        watchers.add(asyncio.get_running_loop().create_task(client.watch()))
        return client

    watchers: set[asyncio.Task[None]] = set()
    opened = await bounded([partial(start, d) for d in devices], OPEN_CONCURRENCY)
    return [client for client in opened if client is not None]


async def measure_sessions(broker: Broker, fixture: Fixture, levels: Sequence[int],
                           result: Result) -> list[Client]:
    """RSS per idle session; stops early (and says so) if the load generator runs out of
    time opening them."""
    await asyncio.sleep(1.0)
    baseline = broker.rss_kib()
    deadline = time.monotonic() + SESSIONS_BUDGET
    clients: list[Client] = []
    for level in levels:
        clients += await open_sessions(broker, fixture, fixture.devices[len(clients):level],
                                       deadline)
        await asyncio.sleep(1.5)
        result.rss_kib[level] = (broker.rss_kib() - baseline) / len(clients)
        result.sessions[level] = len(clients)
        if len(clients) < level:
            break
    return clients


async def measure_revocation(broker: Broker, fixture: Fixture, clients: list[Client],
                             result: Result) -> None:
    """Revoke devices one by one while their sessions are live; time until each is dropped.

    Each revocation waits a random part of the poll interval first, so that revocations do
    not all land just after a poll (which a strictly sequential loop would do)."""
    interval = fixture.settings.revocation_poll_interval.total_seconds()
    chance = random.Random(7)
    for index in range(min(REVOCATIONS, len(clients))):
        await asyncio.sleep(chance.uniform(0, interval))
        device = fixture.devices[index]
        await asyncio.to_thread(fixture.authority.revoke_device, device_id=device.name,
                                reason="keyCompromise", actor="bench")
        committed = time.perf_counter()
        try:
            await asyncio.wait_for(clients[index].closed.wait(), 5)
            result.revocation_ms.append((time.perf_counter() - committed) * 1000)
        except TimeoutError:
            result.revocation_note = "a revoked session stayed connected for 5 s"
            return
    result.revocation_note = f"{len(clients)} live sessions"


async def mosquitto_keeps_revoked(broker: Broker, fixture: Fixture, clients: list[Client],
                                  result: Result) -> None:
    target = len(clients) - 1
    device = fixture.devices[target]
    await asyncio.to_thread(fixture.authority.revoke_device, device_id=device.name,
                            reason="keyCompromise", actor="bench")
    await asyncio.to_thread(write_crl, fixture.authority, fixture.crl)
    broker.signal(signal.SIGHUP)
    await asyncio.sleep(3)
    if clients[target].closed.is_set():
        result.revocation_note = "dropped the revoked session"
        return
    try:
        await (await Client.open(broker.port, device, fixture.chain)).close()
        reconnect = "reconnect still admitted"
    except (OSError, ssl.SSLError, ConnectionRefusedError, asyncio.IncompleteReadError):
        reconnect = "reconnect refused"
    result.revocation_note = f"never: live session kept 3 s after CRL + SIGHUP ({reconnect})"


async def run_broker(broker: Broker, fixture: Fixture, levels: Sequence[int],
                     log_dir: Path) -> Result:
    result = Result()
    broker.start(log_dir / f"{broker.name}.log")
    try:
        print(f"[{broker.name}] connects", flush=True)
        result.connects_per_cpu_second, result.connects_per_second = await asyncio.wait_for(
            measure_connects(broker, fixture, CONNECTS), PHASE_TIMEOUT)
        print(f"[{broker.name}] QoS 0", flush=True)
        result.qos0_us, result.qos0_delivered = await asyncio.wait_for(
            measure_messages(broker, fixture, qos=0, total=QOS0_MESSAGES, rate=QOS0_RATE),
            PHASE_TIMEOUT)
        print(f"[{broker.name}] QoS 1", flush=True)
        result.qos1_us, result.qos1_delivered = await asyncio.wait_for(
            measure_messages(broker, fixture, qos=1, total=QOS1_MESSAGES, rate=QOS1_RATE),
            PHASE_TIMEOUT)
        print(f"[{broker.name}] idle sessions {list(levels)}", flush=True)
        clients = await asyncio.wait_for(measure_sessions(broker, fixture, levels, result),
                                         PHASE_TIMEOUT * 3)
        if broker.name == "fleet":
            print(f"[{broker.name}] revocation", flush=True)
            await measure_revocation(broker, fixture, clients, result)
            await asyncio.to_thread(reactivate, fixture, REVOCATIONS)
        elif broker.name == "mosquitto":
            await mosquitto_keeps_revoked(broker, fixture, clients, result)
            await asyncio.to_thread(reactivate, fixture, len(fixture.devices))
        else:
            result.revocation_note = "no revocation support"
        await bounded([c.close for c in clients], 64)
    finally:
        broker.stop()
    return result


def reactivate(fixture: Fixture, count: int) -> None:
    """Undo the revocations so the next broker starts from the same fleet."""
    from sqlmodel import col, update

    from fleet.registry.models import Certificate
    from fleet.registry.models import Device as DeviceRow

    names = [d.name for d in fixture.devices[:count]]
    with fixture.authority.transaction() as session:
        session.exec(update(DeviceRow).where(col(DeviceRow.id).in_(names))
                     .values(status=DeviceStatus.ACTIVE))
        session.exec(update(Certificate).where(col(Certificate.device_id).in_(names))
                     .values(status="active", revoked_at=None, revocation_reason=None))
    write_crl(fixture.authority, fixture.crl)


# -- profile -----------------------------------------------------------------------------------


async def profile_fleet(fixture: Fixture, log_dir: Path) -> None:
    for phase in ("connect", "QoS 0", "QoS 1"):
        output = log_dir / f"fleet-{phase.replace(' ', '')}.prof"
        broker = fleet_broker(fixture, profile=output)
        broker.start(log_dir / f"fleet-profile-{phase.replace(' ', '')}.log")
        try:
            if phase == "connect":
                await measure_connects(broker, fixture, 300)
            else:
                await measure_messages(broker, fixture, qos=int(phase[-1]), total=6000,
                                       rate=2000)
        finally:
            broker.stop()
        print(f"\n-- cProfile (event-loop thread CPU), Fleet broker, {phase} phase --")
        stats = pstats.Stats(str(output))
        stats.sort_stats("tottime").print_stats(22)


# -- report ------------------------------------------------------------------------------------


def ratio(value: float, peer: float) -> str:
    return f"{value / peer:.2f}x" if peer else "-"


def report(results: dict[str, Result], levels: Sequence[int]) -> None:
    fleet, mosq, amqtt = (results.get(name, Result()) for name in BROKERS)
    rows: list[tuple[str, float, float, float]] = [
        ("connects per broker-CPU-second", fleet.connects_per_cpu_second,
         mosq.connects_per_cpu_second, amqtt.connects_per_cpu_second),
        ("  (connects per wall second)", fleet.connects_per_second, mosq.connects_per_second,
         amqtt.connects_per_second),
        ("broker CPU us per QoS 0 message", fleet.qos0_us, mosq.qos0_us, amqtt.qos0_us),
        ("broker CPU us per QoS 1 message", fleet.qos1_us, mosq.qos1_us, amqtt.qos1_us),
    ]
    for level in levels:
        rows.append((f"RSS KiB per idle session @{level}", fleet.rss_kib.get(level, 0),
                     mosq.rss_kib.get(level, 0), amqtt.rss_kib.get(level, 0)))
    short = [f"{name} reached {n} of {level} sessions in {SESSIONS_BUDGET:.0f}s"
             for name, result in results.items() for level, n in result.sessions.items()
             if n < level]
    print("\n{:<34}{:>11}{:>11}{:>11}{:>13}{:>13}".format(
        "metric", "fleet", "mosquitto", "amqtt", "fleet/mosq", "amqtt/mosq"))
    for name, ours, peer, stock in rows:
        print(f"{name:<34}{ours:>11.1f}{peer:>11.1f}{stock:>11.1f}"
              f"{ratio(ours, peer):>13}{ratio(stock, peer):>13}")
    print(f"{'messages delivered QoS 0 / QoS 1':<34}"
          f"  fleet {fleet.qos0_delivered} {fleet.qos1_delivered}"
          f"  mosquitto {mosq.qos0_delivered} {mosq.qos1_delivered}"
          f"  amqtt {amqtt.qos0_delivered} {amqtt.qos1_delivered}")
    for line in short:
        print(f"note: {line} (the figure is per session opened)")
    if fleet.revocation_ms:
        ms = sorted(fleet.revocation_ms)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        print(f"revocation -> disconnect (fleet, {len(ms)} revocations, "
              f"{fleet.revocation_note}): p50 {statistics.median(ms):.0f} ms, "
              f"p99 {p99:.0f} ms, max {ms[-1]:.0f} ms")
    elif fleet.revocation_note:
        print(f"revocation (fleet): {fleet.revocation_note}")
    print(f"revocation (mosquitto): {mosq.revocation_note}")
    print(f"revocation (amqtt): {amqtt.revocation_note}")


async def main(arguments: argparse.Namespace) -> None:
    levels = sorted(int(n) for n in arguments.sessions.split(","))
    work = Path(tempfile.mkdtemp(prefix="fleet-broker-bench-"))
    started = time.monotonic()
    try:
        print(f"provisioning {levels[-1]} devices in {work}", flush=True)
        fixture = await asyncio.to_thread(provision, levels[-1], work)
        print(f"  done in {time.monotonic() - started:.0f}s", flush=True)
        makers = {"fleet": fleet_broker, "mosquitto": mosquitto_broker, "amqtt": amqtt_broker}
        results = {}
        for name in [] if arguments.profile_only else arguments.brokers.split(","):
            results[name] = await run_broker(makers[name](fixture), fixture, levels, work)
        if results:
            report(results, levels)
        if arguments.profile or arguments.profile_only:
            await profile_fleet(fixture, work)
        print(f"\ntotal {time.monotonic() - started:.0f}s")
    finally:
        if arguments.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1000,5000",
                        help="idle-session levels (comma-separated)")
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--profile", action="store_true", help="also profile Fleet's broker")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--run-amqtt", help=argparse.SUPPRESS)
    parser.add_argument("--run-profiled-fleet", help=argparse.SUPPRESS)
    parser.add_argument("--profile-only", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.run_amqtt:
        run_stock_amqtt(parsed.run_amqtt)
    elif parsed.run_profiled_fleet:
        run_profiled_fleet(parsed.run_profiled_fleet)
    else:
        asyncio.run(main(parsed))
