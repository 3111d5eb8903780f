"""Revoke-to-drop across two broker processes on one PostgreSQL registry, pushed and polled.

Two ``fleet serve broker`` processes (ports of their own, one data dir, persistence off) share a
fresh PostgreSQL database (made on the server named, dropped at the end). Each holds the live
sessions of its own devices, opened by a client process of its own (paho-mqtt over mutual TLS;
neither a broker's process nor this one's). Each run revokes one device held by broker A, then
one held by broker B ("both ways"), in this process (as ``fleet device revoke`` does), and
times each from the call that revokes (its transaction included: a pushed drop can come before
the call has returned) to the moment its client sees the connection closed (CLOCK_MONOTONIC,
one clock for every process of the machine).

Two modes, the brokers started again for each:

- push: ``broker.revocation_poll_interval = 60s`` (``revocation_max_staleness = 120s``), so
  a drop within the interval can only come from the NOTIFY of the event;
- poll: ``broker.revocation_push = false`` at the default interval (250 ms); each revocation
  waits a random part of the interval first, so that the runs sample its phase.

Reported per mode and broker: min / median / max over the runs, in ms.

    .venv/bin/python bench/revoke_two_brokers.py [--postgres URL] [--runs 5]

--postgres defaults to $FLEET_TEST_POSTGRES_URL (tests/pg.sh starts a server).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import random
import re
import secrets
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import make_url

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.ca import Paths, load_ca
from fleet.registry import make_engine
from fleet.settings import Settings, load_settings

FLEET = Path(sys.executable).parent / "fleet"
SPAWN = multiprocessing.get_context("spawn")
GROUP = "bench"
DROP_WAIT = 70.0
"""Seconds a client waits for its drop: more than the push mode's poll interval."""


@dataclass(frozen=True)
class Mode:
    name: str
    env: dict[str, str]
    jitter: float
    """Seconds of random wait before a revocation (up to)."""


MODES = (
    Mode("push (NOTIFY; poll every 60 s)", {"FLEET_BROKER_REVOCATION_POLL_INTERVAL": "60s",
                                            "FLEET_BROKER_REVOCATION_MAX_STALENESS": "120s"},
         jitter=0.25),
    Mode("poll only (every 250 ms)", {"FLEET_BROKER_REVOCATION_PUSH": "false"}, jitter=0.25),
)


@contextmanager
def database(server: str) -> Iterator[str]:
    """A fresh database on *server*, dropped at the end."""
    name = f"fleet_revoke_{secrets.token_hex(4)}"
    admin = make_engine(server, pool_size=1)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def enroll(authority: Authority, names: list[str], directory: Path) -> None:
    """Each device enrolled with a token of its own and a CSR, as EST simpleenroll does."""
    authority.ensure_group(name=GROUP, actor="bench")
    tokens = authority.create_tokens(group=GROUP, count=len(names), actor="bench")
    for name, token in zip(names, tokens, strict=True):
        key = pki.generate_private_key("p256")
        csr = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).sign(
            key, hashes.SHA256())
        issued = authority.enroll(credential=TokenCredential(str(token.token)),
                                  csr=csr.public_bytes(serialization.Encoding.PEM),
                                  actor="bench")
        (directory / f"{name}.key").write_bytes(pki.private_key_pem(key))
        (directory / f"{name}.key").chmod(0o600)
        (directory / f"{name}.pem").write_text(pki.certificate_pem(issued.certificate))


# -- the client processes -------------------------------------------------------------------

def holder(pipe: Connection, port: int, chain: str, directory: str, names: list[str]) -> None:
    """Connect *names* to the broker on *port*; then answer ("drop", name) with the monotonic
    time its connection was closed (None: not within DROP_WAIT), until ("end",)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dropped: dict[str, float] = {}
    events = {name: threading.Event() for name in names}
    connected: queue.Queue[tuple[str, int]] = queue.Queue()
    clients = []
    for name in names:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        context = ssl.create_default_context(cafile=chain)
        context.load_cert_chain(f"{directory}/{name}.pem", f"{directory}/{name}.key")
        client.tls_set_context(context)

        def on_disconnect(_c: object, _u: object, _f: object, _rc: object, _p: object,
                          name: str = name) -> None:
            dropped.setdefault(name, time.monotonic())
            events[name].set()

        client.on_disconnect = on_disconnect
        client.on_connect = lambda _c, _u, _f, code, _p, name=name: connected.put(
            (name, code.value))
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        clients.append(client)
    codes = dict(connected.get(timeout=60) for _ in names)
    pipe.send(("connected", codes))
    while True:
        message = pipe.recv()
        if message[0] == "end":
            break
        name = message[1]
        pipe.send(dropped.get(name) if events[name].wait(DROP_WAIT) else None)
    for client in clients:
        client.disconnect()
        client.loop_stop()


# -- the brokers ----------------------------------------------------------------------------

@contextmanager
def broker(env: dict[str, str]) -> Iterator[int]:
    """One ``fleet serve broker`` on a free port: its port."""
    process = subprocess.Popen([str(FLEET), "serve", "broker"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"MQTT listening on mqtts://\S+:(\d+)", line)
        if not found:
            raise RuntimeError(f"broker did not start: {line!r}")
        yield int(found.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def holding(port: int, chain: Path, directory: Path, names: list[str]
            ) -> Iterator[Connection]:
    parent, child = SPAWN.Pipe()
    process = SPAWN.Process(target=holder, args=(child, port, str(chain), str(directory),
                                                 names), daemon=True)
    process.start()
    try:
        if not parent.poll(120):
            raise RuntimeError("client process did not connect its devices")
        _, codes = parent.recv()
        refused = {n: c for n, c in codes.items() if c != 0}
        if refused:
            raise RuntimeError(f"CONNECT refused: {refused}")
        yield parent
    finally:
        if process.is_alive():
            parent.send(("end",))
            process.join(20)
        if process.is_alive():
            process.terminate()
            process.join(5)


def measure(mode: Mode, env: dict[str, str], authority: Authority, chain: Path,
            directory: Path, devices: dict[str, list[str]], runs: int
            ) -> dict[str, list[float]]:
    """Revoke-to-drop times, ms, per broker."""
    chance = random.Random(7)
    times: dict[str, list[float]] = {"A": [], "B": []}
    with ExitStack() as stack:
        ports = {side: stack.enter_context(broker({**env, **mode.env})) for side in "AB"}
        pipes = {side: stack.enter_context(holding(ports[side], chain, directory,
                                                   devices[side][:runs]))
                 for side in "AB"}
        time.sleep(1.0)  # every watcher listening (push mode): past its start-up
        for run in range(runs):
            for side in "AB":
                victim = devices[side][run]
                time.sleep(chance.uniform(0, mode.jitter))
                revoked = time.monotonic()  # the drop may come before the call returns
                authority.revoke_device(device_id=victim, reason="keyCompromise",
                                        actor="bench")
                pipes[side].send(("drop", victim))
                closed = pipes[side].recv()
                if closed is None:
                    raise RuntimeError(f"{mode.name}: {victim} on broker {side} was not "
                                       f"dropped within {DROP_WAIT:g} s")
                times[side].append((closed - revoked) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("FLEET_TEST_POSTGRES_URL"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not args.postgres:
        parser.error("name a PostgreSQL server with --postgres or FLEET_TEST_POSTGRES_URL")
    with tempfile.TemporaryDirectory(prefix="fleet-revoke-") as work, \
            database(args.postgres) as url:
        data_dir = Path(work) / "data"
        env = {**os.environ, "FLEET_DATA_DIR": str(data_dir), "FLEET_DATABASE_URL": url,
               "FLEET_CA_PASSPHRASE": os.environ.get("FLEET_CA_PASSPHRASE")
               or secrets.token_urlsafe(16), "FLEET_BROKER_PORT": "0",
               "FLEET_BROKER_METRICS_PORT": "-1", "FLEET_BROKER_PERSISTENCE": "false"}
        subprocess.run([str(FLEET), "init"], env=env, check=True, capture_output=True)
        os.environ["FLEET_CA_PASSPHRASE"] = env["FLEET_CA_PASSPHRASE"]
        settings: Settings = load_settings(environ=env)
        engine = make_engine(url, pool_size=2)
        authority = Authority(settings=settings, engine=engine, ca=load_ca(settings))
        clients = Path(work) / "clients"
        clients.mkdir()
        needed = args.runs * len(MODES)
        devices = {side: [f"{side.lower()}-{n:03d}" for n in range(needed)] for side in "AB"}
        enroll(authority, devices["A"] + devices["B"], clients)
        chain = Paths.of(settings).chain
        print(f"revoke -> dropped session, two `fleet serve broker` on one PostgreSQL, "
              f"{args.runs} runs each way (ms)")
        print(f"{'mode':34} {'broker':7} {'min':>8} {'median':>8} {'max':>8}")
        for index, mode in enumerate(MODES):
            fresh = {side: names[index * args.runs:] for side, names in devices.items()}
            times = measure(mode, env, authority, chain, clients, fresh, args.runs)
            for side, values in times.items():
                print(f"{mode.name:34} {side:7} {min(values):8.1f} "
                      f"{statistics.median(values):8.1f} {max(values):8.1f}", flush=True)
        engine.dispose()


if __name__ == "__main__":
    main()
