"""Every benchmark side by side in one run; writes bench/RESULTS.md (``bench/run``).

    bench/run [--quick] [--out FILE] [--keep] [--only PHASE[,PHASE]]

One fixture (a fleet CA, N devices, one service) serves every system. The load generator is
bench/loadgen/, the same processes for every system. Phases, in order: the TLS handshake
ceilings (openssl s_server), MQTT connects, QoS 0 and QoS 1 messages (Fleet, Mosquitto and
stock amqtt running side by side, repeats interleaved), idle sessions and revocation at N live
sessions (one broker at a time), EST enrollment and re-enrollment (Fleet with 1 and 2
workers, and Fleet's enrollment without its registry as the ceiling), and the device
simulator (``fleet sim run --spawn-services``); ``--only`` runs some of them (``PHASES``), and
the page shows the targets of the others as not measured. Loopback only; bounded in count and
time; every process it starts is ended by PID.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from _measure import percentile
from fixture import GROUP, Fixture, provision
from loadgen import Workers, credentials, split
from loadgen import connect as connect_load
from loadgen import est as est_load
from loadgen import idle as idle_load
from loadgen import publish as publish_load
from results import Table, Target, targets_markdown
from systems import (
    FLEET,
    Server,
    fleet_broker,
    fleet_est,
    mosquitto,
    mosquitto_crl,
    rewrite_crl,
    s_server,
    stock_amqtt,
)

from fleet.authority import TokenCredential

HERE = Path(__file__).resolve().parent
BROKERS = ("fleet", "mosquitto", "amqtt")
PEER = [("fleet", "mosquitto"), ("amqtt", "mosquitto")]
CONNECT_DEVICES = 200
PUBLISHERS = 10
LOAD_PROCESSES = 2
PHASES = ("ceilings", "brokers", "sessions", "est", "sim")
"""What ``--only`` chooses from: the handshake ceilings, the broker connect and message tables,
idle sessions and revocation, EST, the simulator."""
GLOBALSIGN = "globalsign estserver (issue 13)"
GLOBALSIGN_FIGURES = {"token enrollments per s": 191.0, "token per server CPU-s": 191.0,
                      "re-enrollments per s": 164.0, "re-enroll per server CPU-s": 154.0}
GLOBALSIGN_SCALED = "globalsign, scaled to this machine"
ISSUE_MOSQUITTO_CONNECTS = 511.0
"""Mosquitto's connects per CPU-second on the machine of issue 13's EST figures, measured as
the connects table measures them: the yardstick that scales those figures to this machine."""


@dataclass(frozen=True)
class Plan:
    name: str
    repeats: int
    connect_seconds: float
    message_seconds: float
    qos0_rate: int
    qos1_rate: int
    sessions: int
    session_seconds: float
    """at most this long to open them (a slow broker holds fewer, and the page says so)"""
    holders: int
    revocations: int
    est_seconds: float
    est_threads: int
    sim_devices: int
    sim_duration: str
    sim_revoke: int


QUICK = Plan("quick", repeats=2, connect_seconds=2, message_seconds=2, qos0_rate=1000,
             qos1_rate=500, sessions=200, session_seconds=30, holders=2, revocations=8,
             est_seconds=2, est_threads=8, sim_devices=100, sim_duration="20s", sim_revoke=3)
FULL = Plan("full", repeats=3, connect_seconds=10, message_seconds=8, qos0_rate=2000,
            qos1_rate=1000, sessions=10_000, session_seconds=150, holders=4, revocations=30,
            est_seconds=8, est_threads=8, sim_devices=10_000, sim_duration="240s", sim_revoke=10)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Run:
    plan: Plan
    fixture: Fixture
    logs: Path
    started: float

    def log(self, name: str) -> Path:
        return self.logs / f"{name.replace(' ', '-')}.log"

    @contextmanager
    def server(self, server: Server) -> Iterator[Server]:
        server.start(self.log(server.name))
        try:
            yield server
        finally:
            server.stop()


# -- MQTT connects and the TLS ceilings ----------------------------------------------------------


def measure_connects(server: Server, pool: Workers, table: Table, system: str, *, mode: str,
                     seconds: float, limit: int = 10**9, record: bool = True) -> None:
    cpu = server.cpu()
    answers = pool.ask((server.port, mode, seconds, limit), seconds + 120, "connect")
    used = server.cpu() - cpu
    if not record:
        return
    done = sum(a["done"] for a in answers)
    wall = max(a["seconds"] for a in answers)
    failed: Counter[str] = Counter()
    for answer in answers:
        failed.update(answer["failed"])
    handshakes = [v for a in answers for v in a["handshake_ms"]]
    replies = [v for a in answers for v in a["reply_ms"]]
    what = "connects" if mode == "mqtt" else "handshakes"
    reply = "connect -> CONNACK" if mode == "mqtt" else "connect -> echo"
    table.add(f"{what} per second ({LOAD_PROCESSES} sequential workers)", system, done / wall)
    table.add(f"{what} per server CPU-second", system, done / used if used else math.nan)
    table.add("server CPU, % of one core", system, 100 * used / wall, "{:.0f}")
    table.add(f"{reply} p50, ms", system, percentile(replies, 0.5), "{:.2f}")
    table.add(f"{reply} p99, ms", system, percentile(replies, 0.99), "{:.2f}")
    table.add("TLS handshake p50 (client side), ms", system, percentile(handshakes, 0.5),
              "{:.2f}")
    table.add("TLS handshake p99 (client side), ms", system, percentile(handshakes, 0.99),
              "{:.2f}")
    table.add("failed attempts", system, sum(failed.values()), "{:.0f}")
    if failed:
        table.notes.append(f"- {system}: failed attempts {dict(failed)}")


def connect_pool(run: Run, clients: list[Any] | None) -> Workers:
    """The connect workers: each with its share of *clients* (None: no client certificate)."""
    chain = str(run.fixture.chain)
    parts = split(credentials(clients), LOAD_PROCESSES) if clients else [None] * LOAD_PROCESSES
    return Workers(connect_load.worker, [(chain, part) for part in parts])


def ceilings(run: Run, devices: Workers) -> Table:
    table = Table("TLS handshake ceiling: openssl s_server", ["server-auth", "mTLS"],
                  [("mTLS", "server-auth")],
                  intro="`openssl s_server -rev -num_tickets 0` with Fleet's server "
                  "certificate; the connect workers do the TCP connect, the handshake "
                  "(with a device certificate for mTLS) and one echoed line, sequentially.")
    with connect_pool(run, None) as anonymous:
        anonymous.ready()
        for mtls, system in ((False, "server-auth"), (True, "mTLS")):
            with run.server(s_server(run.fixture, mtls=mtls)) as server:
                for repeat in range(run.plan.repeats):
                    say(f"ceiling {system} {repeat + 1}/{run.plan.repeats}")
                    measure_connects(server, devices if mtls else anonymous, table, system,
                                     mode="tls", seconds=run.plan.connect_seconds)
    return table


def broker_tables(run: Run, brokers: dict[str, Server], devices: Workers) -> tuple[Table, Table]:
    connects = Table("MQTT connects: a new mTLS handshake per connect", list(BROKERS), PEER,
                     intro=f"{LOAD_PROCESSES} connect worker processes, each connecting "
                     f"sequentially (paho-mqtt, client id = CN, clean session) for "
                     f"{run.plan.connect_seconds:g} s, cycling over {CONNECT_DEVICES} device "
                     "certificates; then DISCONNECT. Server CPU from /proc/<pid>/stat.")
    for name, server in brokers.items():  # warm-up, not recorded
        measure_connects(server, devices, connects, name, mode="mqtt", seconds=2, limit=10,
                         record=False)
    for repeat in range(run.plan.repeats):
        for name, server in brokers.items():
            say(f"connects {name} {repeat + 1}/{run.plan.repeats}")
            measure_connects(server, devices, connects, name, mode="mqtt",
                             seconds=run.plan.connect_seconds)
    messages = Table("Messages: 10 devices publish, one service receives", list(BROKERS), PEER,
                     intro=f"{PUBLISHERS} devices (paho-mqtt, {LOAD_PROCESSES} processes) "
                     f"publish 64-byte payloads to their own telemetry topic for "
                     f"{run.plan.message_seconds:g} s at an offered {run.plan.qos0_rate}/s "
                     f"(QoS 0) and {run.plan.qos1_rate}/s (QoS 1); the service `ingest` "
                     "(its own process) subscribes to `devices/+/telemetry` at the same QoS. "
                     "Broker CPU per message: broker CPU over the window / messages "
                     "delivered (each is received once and delivered once).")
    chain = str(run.fixture.chain)
    (service,) = credentials([run.fixture.service])
    parts = split(credentials(run.fixture.devices[:PUBLISHERS]), LOAD_PROCESSES)
    for qos, rate in ((0, run.plan.qos0_rate), (1, run.plan.qos1_rate)):
        with ExitStack() as stack:
            pools = {name: (stack.enter_context(Workers(
                publish_load.sink, [(server.port, chain, service, qos)])),
                stack.enter_context(Workers(
                    publish_load.publisher,
                    [(server.port, chain, part, qos, rate / len(parts)) for part in parts])))
                for name, server in brokers.items()}
            for sink, publishers in pools.values():
                sink.ready()
                publishers.ready()
            for repeat in range(run.plan.repeats):
                for name, server in brokers.items():
                    say(f"QoS {qos} {name} {repeat + 1}/{run.plan.repeats}")
                    measure_messages(run, server, *pools[name], messages, name, qos=qos)
    return connects, messages


def measure_messages(run: Run, server: Server, sink: Workers, publishers: Workers,
                     table: Table, system: str, *, qos: int) -> None:
    time.sleep(0.5)
    cpu = server.cpu()
    sent = publishers.ask(run.plan.message_seconds, run.plan.message_seconds + 120, "publish")
    total = sum(s["sent"] for s in sent)
    (received,) = sink.ask(total, 120, "sink")
    used = server.cpu() - cpu
    count = received["received"]
    wall = max(s["seconds"] for s in sent)
    table.add(f"QoS {qos}: broker CPU per message, us", system,
              used / count * 1e6 if count else math.nan)
    table.add(f"QoS {qos}: offered / delivered per second", system, count / wall, "{:.0f}")
    table.add(f"QoS {qos}: lost messages (sent - delivered)", system, total - count, "{:.0f}")
    if qos:
        table.add("QoS 1: PUBACKs missing at the end", system,
                  total - sum(s["acknowledged"] for s in sent), "{:.0f}")
    table.add(f"QoS {qos}: publish -> delivery p50, ms", system,
              percentile(received["latency_ms"], 0.5), "{:.2f}")
    table.add(f"QoS {qos}: publish -> delivery p99, ms", system,
              percentile(received["latency_ms"], 0.99), "{:.2f}")


# -- idle sessions and revocation ------------------------------------------------------------


def sessions_table(run: Run, makers: dict[str, Any]) -> Table:
    plan = run.plan
    table = Table(f"Idle sessions: {plan.sessions:,} live mTLS sessions", list(BROKERS), PEER,
                  intro=f"{plan.holders} idle-session holder processes open {plan.sessions:,} "
                  "sessions (blocking ssl sockets, 8 threads each; CONNECT, SUBSCRIBE to the "
                  "device's command topic at QoS 1, keep-alive 0) on a freshly started broker "
                  "and keep them. RSS: the broker's VmRSS with the sessions minus before, per "
                  "session. Revocation: with every session live, devices revoked one at a time "
                  "(after a random part of Fleet's poll interval), time from the committed "
                  "revocation to the server closing that session.")
    offset = 0
    for name in BROKERS:
        devices = run.fixture.devices[offset:offset + plan.sessions]
        offset += plan.revocations if name == "fleet" else 1
        with run.server(makers[name](run.fixture)) as server:
            say(f"sessions {name}: {len(devices)}")
            measure_sessions(run, server, table, name, devices)
    return table


def measure_sessions(run: Run, server: Server, table: Table, system: str,
                     devices: list[Any]) -> None:
    plan = run.plan
    chain = str(run.fixture.chain)
    parts = split(credentials(devices), plan.holders)
    with Workers(idle_load.holder, [(server.port, chain, part, 8) for part in parts]) \
            as holders:
        holders.ready()
        time.sleep(1.0)
        before = server.rss_kib()
        begun = time.monotonic()
        holders.send(plan.session_seconds)
        opened = holders.receive(plan.session_seconds + 120, "open sessions")
        took = time.monotonic() - begun
        count = sum(o[1] for o in opened)
        failed: Counter[str] = Counter()
        for answer in opened:
            failed.update(answer[2])
        time.sleep(2.0)
        table.add("sessions opened", system, count, "{:.0f}")
        table.add("sessions opened per second (holders)", system, count / took, "{:.0f}")
        table.add("RSS per idle session, KiB", system,
                  (server.rss_kib() - before) / count if count else math.nan)
        table.add("broker RSS with the sessions, MiB", system, server.rss_kib() / 1024)
        if failed:
            table.notes.append(f"- {system}: sessions not opened {dict(failed)}")
        if system == "fleet":
            revoke_live(run, server, holders, table, devices[:plan.revocations])
        elif system == "mosquitto":
            mosquitto_keeps(run, server, holders, table, devices[-1])
        else:
            holders.send("report")
            holders.receive(60, "report")
            table.notes.append("- amqtt: no revocation (stock amqtt checks no client "
                               "certificate and no CRL)")


def revoke_live(run: Run, server: Server, holders: Workers, table: Table,
                victims: list[Any]) -> None:
    interval = run.fixture.settings.revocation_poll_interval.total_seconds()
    chance = random.Random(13)
    committed: dict[str, float] = {}
    for device in victims:
        time.sleep(chance.uniform(0, interval))
        run.fixture.authority.revoke_device(device_id=device.name, reason="keyCompromise",
                                            actor="bench")
        committed[device.name] = time.monotonic()
    time.sleep(interval + 3.0)
    holders.send("report")
    closed: dict[str, float] = {}
    for answer in holders.receive(60, "report"):
        closed.update(answer)
    latencies = [(closed[n] - t) * 1000 for n, t in committed.items() if n in closed]
    kept = [n for n in committed if n not in closed]
    table.add("revocation -> disconnect p50, ms", "fleet", percentile(latencies, 0.5))
    table.add("revocation -> disconnect p99, ms", "fleet", percentile(latencies, 0.99))
    table.add("revocation -> disconnect max, ms", "fleet", max(latencies, default=math.nan))
    live = table.median("sessions opened", "fleet")
    table.notes.append(f"- fleet: {len(latencies)} revocations at {live:,.0f} live sessions"
                       + (f"; still connected {interval + 3:.1f} s later: {kept}" if kept
                          else ""))


def mosquitto_keeps(run: Run, server: Server, holders: Workers, table: Table,
                    device: Any) -> None:
    run.fixture.authority.revoke_device(device_id=device.name, reason="keyCompromise",
                                        actor="bench")
    rewrite_crl(run.fixture, mosquitto_crl(run.fixture))
    server.signal(signal.SIGHUP)
    time.sleep(3.0)
    with Workers(connect_load.worker,
                 [(str(run.fixture.chain), credentials([device]))]) as probe:
        probe.ready()
        (answer,) = probe.ask((server.port, "mqtt", 5.0, 1), 60, "probe")
    refused = answer["done"] == 0
    holders.send("report")
    closed: dict[str, float] = {}
    for answer in holders.receive(60, "report"):
        closed.update(answer)
    table.notes.append(
        "- mosquitto: revoked a device, rewrote the CRL (`fleet crl --force --out`) and sent "
        "SIGHUP: the live session was " + ("closed" if device.name in closed else
                                           "kept (Mosquitto checks the CRL in new handshakes "
                                           "only)")
        + "; a new connect with that certificate was "
        + ("refused" if refused else "admitted"))


# -- EST ----------------------------------------------------------------------------------------


def machine_scale(connects: Table | None) -> float | None:
    """How much faster this machine connects to Mosquitto than issue 13's did (None when the
    connects table was not measured in this run)."""
    if connects is None:
        return None
    measured = connects.median("connects per server CPU-second", "mosquitto")
    return None if math.isnan(measured) else measured / ISSUE_MOSQUITTO_CONNECTS


def est_table(run: Run, connects: Table | None) -> Table:
    plan = run.plan
    scale = machine_scale(connects)
    systems = ["fleet x1", "fleet x2", "no registry (in-process)", GLOBALSIGN]
    pairs = [("fleet x1", GLOBALSIGN), ("fleet x2", "fleet x1"),
             ("fleet x1", "no registry (in-process)")]
    if scale is not None:
        systems.append(GLOBALSIGN_SCALED)
        pairs.insert(1, ("fleet x1", GLOBALSIGN_SCALED))
    table = Table("EST enrollment: a new TLS connection and a fresh P-256 key per request",
                  systems, pairs,
                  intro=f"{LOAD_PROCESSES} EST worker processes x {plan.est_threads} threads "
                  f"(blocking ssl), {plan.est_seconds:g} s per repeat, against `fleet serve est "
                  "--workers N` on SQLite. Token: simpleenroll with a bootstrap token, a new "
                  "device per request; re-enroll: simplereenroll over mTLS with the device's "
                  "current certificate and a new key. Server CPU: every process of the service.")
    for name, value in GLOBALSIGN_FIGURES.items():
        table.add(name, GLOBALSIGN, value, "{:.0f}")
    table.notes.append(f"- {GLOBALSIGN}: the figures stated in issue 13 (globalsign/est "
                       "estserver, Go, mock CA, 16 workers), not measured in this run: the "
                       "bar to beat.")
    if scale is not None:
        for name, value in GLOBALSIGN_FIGURES.items():
            table.add(name, GLOBALSIGN_SCALED, value * scale, "{:.0f}")
        table.notes.append(
            f"- {GLOBALSIGN_SCALED}: those figures x {scale:.2f}, Mosquitto's connects per "
            f"CPU-second in this run over the {ISSUE_MOSQUITTO_CONNECTS:.0f} of issue 13's "
            "machine (both mostly TLS handshakes): the bar the targets use.")
    spools = [tempfile.mkdtemp(prefix="est-", dir=run.fixture.work)
              for _ in range(LOAD_PROCESSES)]
    with Workers(est_load.worker, [(str(run.fixture.paths.root), plan.est_threads, spool)
                                   for spool in spools]) as pool:
        pool.ready()
        for workers in (1, 2):
            system = f"fleet x{workers}"
            with run.server(fleet_est(run.fixture, workers)) as server:
                for repeat in range(plan.repeats):
                    say(f"EST {system} {repeat + 1}/{plan.repeats}")
                    for kind in ("token", "reenroll"):
                        measure_est(run, server, pool, table, system, kind)
    no_registry(run, table)
    return table


def measure_est(run: Run, server: Server, pool: Workers, table: Table, system: str,
                kind: str) -> None:
    plan = run.plan
    threads = plan.est_threads
    jobs: list[tuple[str, ...]]
    if kind == "token":
        issued = run.fixture.authority.create_tokens(group=GROUP, actor="bench",
                                                     count=int(600 * plan.est_seconds))
        jobs = [(f"t-{t.row.id}", str(t.token)) for t in issued]
    else:
        jobs = enrolled_devices(run, 2 * threads * LOAD_PROCESSES)
    parts = split(jobs, LOAD_PROCESSES)
    cpu = server.cpu()
    for pipe, part in zip(pool.pipes, parts, strict=True):
        pipe.send((server.port, kind, part, plan.est_seconds))
    answers = pool.receive(plan.est_seconds + 120, "EST")
    used = server.cpu() - cpu
    statuses: Counter[str] = Counter()
    for answer in answers:
        statuses.update(answer["statuses"])
    done = statuses.get("200", 0)
    wall = max(a["seconds"] for a in answers)
    latencies = [v for a in answers for v in a["latency_ms"]]
    label = "token" if kind == "token" else "re-enroll"
    table.add("token enrollments per s" if kind == "token" else "re-enrollments per s", system,
              done / wall, "{:.0f}")
    table.add(f"{label} per server CPU-s", system, done / used if used else math.nan, "{:.0f}")
    table.add(f"{label} p50, ms", system, percentile(latencies, 0.5))
    table.add(f"{label} p99, ms", system, percentile(latencies, 0.99))
    others = {k: v for k, v in statuses.items() if k != "200"}
    if others:
        table.notes.append(f"- {system} {label}: other outcomes {others}")


def enrolled_devices(run: Run, count: int) -> list[tuple[str, ...]]:
    """Devices enrolled through the Authority (not measured): id, key PEM, certificate PEM."""
    from cryptography.hazmat.primitives import serialization

    authority = run.fixture.authority
    tokens = authority.create_tokens(group=GROUP, actor="bench", count=count)
    jobs: list[tuple[str, ...]] = []
    for token in tokens:
        device_id = f"r-{token.row.id}"
        key, csr = est_load.fresh_csr(device_id)
        cert = authority.enroll(credential=TokenCredential(str(token.token)), csr=csr,
                                actor="bench").certificate
        jobs.append((device_id, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode(),
            cert.public_bytes(serialization.Encoding.PEM).decode()))
    return jobs


def no_registry(run: Run, table: Table) -> None:
    import est_ceiling

    count = int(300 * run.plan.est_seconds)
    system = "no registry (in-process)"
    with Workers(est_ceiling.worker, [(run.fixture.env, count)]) as worker:
        worker.ready()
        for repeat in range(run.plan.repeats):
            say(f"EST without the registry {repeat + 1}/{run.plan.repeats}")
            ((done, wall, cpu),) = worker.ask("go", 300, "no-registry enrollment")
            table.add("token enrollments per s", system, done / wall, "{:.0f}")
            table.add("token per server CPU-s", system, done / cpu, "{:.0f}")
    table.notes.append("- no registry (in-process): Fleet's CSR check, signing and PKCS#7 "
                       "called in one process, no TLS, HTTP or database: the ceiling of the "
                       "enrollment itself.")


# -- the simulator ------------------------------------------------------------------------------


def simulator(run: Run) -> Table:
    plan = run.plan
    table = Table(f"Simulator: `fleet sim run --devices {plan.sim_devices}`", ["fleet"], [],
                  intro=f"`fleet sim run --spawn-services --devices {plan.sim_devices} "
                  f"--ramp 0 --duration {plan.sim_duration} --revoke {plan.sim_revoke}`: every "
                  "device enrolls over EST and connects over mTLS, started as fast as the "
                  "simulator's enrollment and connect concurrency allow (`--ramp 0`; the "
                  "default of 50 per second alone would take 200 s for 10,000); the simulator, "
                  "the EST service and the broker share this machine.")
    report = run.fixture.work / "sim.json"
    say(f"simulator: {plan.sim_devices} devices for {plan.sim_duration}")
    command = [FLEET, "sim", "run", "--spawn-services", "--devices", str(plan.sim_devices),
               "--ramp", "0", "--duration", plan.sim_duration, "--revoke", str(plan.sim_revoke),
               "--json-report", str(report), "--no-progress"]
    seconds = float(plan.sim_duration.rstrip("s"))
    with run.log("simulator").open("wb") as log:
        done = subprocess.run(command, env=run.fixture.env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=seconds + 900, check=False)
    if not report.exists():
        table.notes.append(f"- the simulator wrote no report (exit {done.returncode}); see "
                           f"its log")
        return table
    data = json.loads(report.read_text())
    for row, key in (("time to enroll every device, s", "time_to_enroll_all_s"),
                     ("time to connect every device, s", "time_to_connect_all_s")):
        value = data.get(key)
        table.add(row, "fleet", math.nan if value is None else float(value))
    table.add("devices connected", "fleet", data["connected"], "{:.0f}")
    revocation = data.get("revocation_latency_ms") or {}
    for name in ("p50", "p99"):
        if name in revocation:
            table.add(f"revocation latency {name}, ms", "fleet", float(revocation[name]))
    table.notes.append(f"- run {'passed' if data['ok'] else 'FAILED'} its expectations "
                       f"(exit {done.returncode}); unexpected errors: "
                       f"{data['unexpected_errors']}")
    return table


# -- the page -----------------------------------------------------------------------------------


def machine() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    from cryptography.hazmat.backends.openssl.backend import backend

    mosquitto_version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True,
                                       check=False).stdout.splitlines()[0]
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--",
                            "fleet", "provisioning", "device_sim"], capture_output=True,
                           text=True, check=False).stdout.splitlines()
    return [
        f"- machine: {model}, {os.cpu_count()} cores, {int(memory) / 1024**2:.1f} GiB RAM, "
        f"Linux {platform.release()}",
        f"- load average at the start: {Path('/proc/loadavg').read_text().split()[:3]}",
        f"- Python {platform.python_version()} ({ssl.OPENSSL_VERSION}), amqtt "
        f"{metadata.version('amqtt')}, cryptography {metadata.version('cryptography')} "
        f"({backend.openssl_version_text()}), paho-mqtt {metadata.version('paho-mqtt')}, "
        f"{mosquitto_version}, `openssl` {openssl}",
        f"- Fleet at {head}" + (f" with {len(dirty)} changed files" if dirty else ""),
    ]


def targets(plan: Plan, connects: Table, messages: Table, sessions: Table, est: Table,
            sim: Table) -> list[Target]:
    def ratio(table: Table, row: str) -> Any:
        return lambda: table.ratio(row, "fleet", "mosquitto")

    bar = GLOBALSIGN_SCALED if GLOBALSIGN_SCALED in est.systems else GLOBALSIGN

    return [
        Target("connect -> CONNACK p50, Fleet / Mosquitto",
               ratio(connects, "connect -> CONNACK p50, ms"), 1.5, at_most=True),
        Target("connects per broker CPU-second, Fleet / Mosquitto",
               ratio(connects, "connects per server CPU-second"), 1.0, at_most=False),
        Target("CPU per QoS 0 message, Fleet / Mosquitto",
               ratio(messages, "QoS 0: broker CPU per message, us"), 1.5, at_most=True),
        Target("CPU per QoS 1 message, Fleet / Mosquitto",
               ratio(messages, "QoS 1: broker CPU per message, us"), 2.0, at_most=True),
        Target("QoS 0 + QoS 1 messages lost by Fleet",
               lambda: messages.median("QoS 0: lost messages (sent - delivered)", "fleet")
               + messages.median("QoS 1: lost messages (sent - delivered)", "fleet"),
               0, at_most=True, unit=""),
        Target("RSS per idle session, Fleet / Mosquitto",
               ratio(sessions, "RSS per idle session, KiB"), 2.0, at_most=True),
        Target(f"revocation p99 at {sessions.median('sessions opened', 'fleet'):,.0f} live "
               "sessions, ms", lambda: sessions.median("revocation -> disconnect p99, ms",
                                                       "fleet"), 250, at_most=True, unit=""),
        Target(f"EST token per server CPU-s, Fleet x1 / {bar}",
               lambda: est.ratio("token per server CPU-s", "fleet x1", bar), 2.0,
               at_most=False),
        Target(f"EST re-enroll per server CPU-s, Fleet x1 / {bar}",
               lambda: est.ratio("re-enroll per server CPU-s", "fleet x1", bar), 2.0,
               at_most=False),
        Target("EST token enrollments per s, 2 workers / 1 worker (SQLite)",
               lambda: est.ratio("token enrollments per s", "fleet x2", "fleet x1"), 1.0,
               at_most=False),
        Target(f"simulator: {plan.sim_devices} devices enrolled "
               "and connected, s", lambda: sim.median("time to connect every device, s",
                                                       "fleet"), 120, at_most=True, unit=""),
    ]


def page(run: Run, header: list[str], tables: list[Table], goals: list[Target]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `bench/run{' --quick' if run.plan.name == 'quick' else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} in {time.monotonic() - run.started:.0f} s "
        "(bench/README.md says what each figure means). Each cell: median (min-max) over "
        f"{run.plan.repeats} repeats where the phase repeats; ratios divide the medians of the "
        "same run.",
        "",
        *header,
        "",
        "## Targets (issue 13)",
        "",
        *targets_markdown(goals),
        "## Figures",
        "",
    ]
    for table in tables:
        lines += table.markdown()
    return "\n".join(lines)


def phases(text: str) -> set[str]:
    """The phases a ``--only`` value names (an argparse type: an unknown name is an error)."""
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    unknown = chosen - set(PHASES)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown phase {', '.join(sorted(unknown)) or '(none)'}: choose from "
            f"{', '.join(PHASES)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="every benchmark at small counts (a few minutes)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--only", type=phases, default=set(PHASES), metavar="PHASE[,PHASE]",
                        help=f"run only these phases, of {', '.join(PHASES)}")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    only: set[str] = args.only

    def terminate(_signum: int, _frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        header = machine()
        count = plan.sessions + plan.revocations + 2
        say(f"provisioning {count} devices in {work}")
        fixture = provision(count, work)
        logs = work / "logs"
        logs.mkdir()
        run = Run(plan, fixture, logs, started)
        makers = {"fleet": fleet_broker, "mosquitto": mosquitto, "amqtt": stock_amqtt}
        connects = messages = ceiling = sessions = est = sim = None
        with ExitStack() as stack:
            if only & {"ceilings", "brokers"}:
                devices = stack.enter_context(
                    connect_pool(run, fixture.devices[:CONNECT_DEVICES]))
                devices.ready()
            if "ceilings" in only:
                ceiling = ceilings(run, devices)
            if "brokers" in only:
                brokers = {name: stack.enter_context(run.server(make(fixture)))
                           for name, make in makers.items()}
                connects, messages = broker_tables(run, brokers, devices)
        if "sessions" in only:
            sessions = sessions_table(run, makers)
        if "est" in only:
            est = est_table(run, connects)
        if "sim" in only:
            sim = simulator(run)
        measured = [t for t in (connects, ceiling, messages, sessions, est, sim)
                    if t is not None]
        blank = Table("", [], [])  # a phase not run: its targets are not measured
        text = page(run, header, measured, targets(
            plan, connects or blank, messages or blank, sessions or blank, est or blank,
            sim or blank))
        args.out.write_text(text)
        say(f"wrote {args.out} in {time.monotonic() - started:.0f} s")
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
