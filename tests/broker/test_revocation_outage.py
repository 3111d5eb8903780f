"""The revocation watcher survives every failure, and the broker fails closed while it cannot
confirm revocation state.

Faults are real: another process holding an exclusive SQLite lock on the broker's registry
file, a PostgreSQL server stopped and started again, and an exception raised while an event
is applied. Each time the watcher keeps polling (failures counted in /metrics), /healthz turns
503 once revocation state is older than broker.revocation_max_staleness, new CONNECTs get
0x03 while connected clients stay, and the broker recovers by itself.
"""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

import fleet.broker.backend
from device_sim.services import free_port
from fleet.authority import Authority
from fleet.registry import RevocationEvent, make_engine, migrate

from .conftest import Enroll, StartBroker
from .health_helpers import healthz, metric, total
from .helpers import BrokerThread, Client, Clients, audit_events, wait_until

SERVER_UNAVAILABLE = 3
STALENESS = "1s"
BUSY_TIMEOUT = "5s"
FAILURES = "fleet_broker_revocation_poll_failures_total"
PG_SH = Path(__file__).resolve().parents[1] / "pg.sh"

HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
db.close()
"""
"""Holds an exclusive lock on an SQLite file (WAL mode) until a line arrives on stdin."""


def stale(port: int, timeout: float = 10.0) -> dict[str, object]:
    """Wait for /healthz to say stale (503); its report."""
    reports: list[dict[str, object]] = []

    def is_stale() -> bool:
        status, report = healthz(port)
        reports.append(report)
        return status == 503

    assert wait_until(is_stale, timeout), reports[-1:]
    assert reports[-1]["status"] == "stale"
    return reports[-1]


def fresh(port: int, timeout: float = 10.0) -> bool:
    return wait_until(lambda: healthz(port)[0] == 200, timeout)


def metrics_broker(start_broker: StartBroker, **overrides: str) -> tuple[BrokerThread, int]:
    port = free_port()
    broker = start_broker(metrics_port=str(port), revocation_max_staleness=STALENESS,
                          **overrides)
    return broker, port


# -- an exception while an event is applied ----------------------------------------------

def test_event_whose_handling_raises_is_retried_and_later_revocations_still_drop(
        start_broker: StartBroker, enroll: Enroll, sqlite_authority: Authority,
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker, port = metrics_broker(start_broker)
    assert broker.server is not None
    watcher = broker.server.watcher
    apply, attempts = watcher.apply, list[int | None]()

    def failing(event: RevocationEvent) -> None:
        if len(attempts) < 3:
            attempts.append(event.id)
            raise RuntimeError("fault injected into apply")
        apply(event)

    monkeypatch.setattr(watcher, "apply", failing)
    with Clients(broker) as clients:
        d1, d2 = clients.connect(enroll("d1")), clients.connect(enroll("d2"))
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        assert d1.disconnected.wait(10)
        assert len(attempts) == 3
        assert len(set(attempts)) == 1  # the same event each time: retried, not skipped
        assert metric(port, FAILURES, error="RuntimeError") == 3
        sqlite_authority.revoke_device(device_id="d2", reason="keyCompromise", actor="operator")
        assert d2.disconnected.wait(2)
    status, report = healthz(port)
    assert status == 200
    assert report["revocation_poll_failures"] == 0


def test_event_that_keeps_failing_fails_closed_until_it_applies(
        start_broker: StartBroker, enroll: Enroll, sqlite_authority: Authority,
        sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    broker, port = metrics_broker(start_broker)
    assert broker.server is not None
    watcher = broker.server.watcher
    apply, repaired = watcher.apply, threading.Event()

    def failing(event: RevocationEvent) -> None:
        if not repaired.is_set():
            raise RuntimeError("fault injected into apply")
        apply(event)

    monkeypatch.setattr(watcher, "apply", failing)
    newcomer = enroll("d2")
    with Clients(broker) as clients:
        revoked, bystander = clients.connect(enroll("d1")), clients.connect(enroll("d3"))
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        report = stale(port)
        assert str(report["last_poll_error"]).startswith("RuntimeError: fault injected")
        clients.connect(newcomer, expect=SERVER_UNAVAILABLE)
        assert not bystander.disconnected.is_set()
        assert wait_until(lambda: any(
            e.device_id == "d2" and e.outcome == "refused"
            and "revocation state not confirmed" in (e.reason or "")
            for e in audit_events(sqlite_engine, "broker.connect")))
        repaired.set()
        assert revoked.disconnected.wait(5)
        assert fresh(port)
        clients.connect(newcomer)
        assert not bystander.disconnected.is_set()
    assert metric(port, "fleet_broker_connects_refused_total", connack="0x03") == 1


# -- SQLite: another process holds the registry file locked ------------------------------

@dataclass
class Lock:
    process: subprocess.Popen[str]

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.wait(10) == 0


@pytest.fixture
def lock_registry(sqlite_engine: Engine) -> Iterator[Lock]:
    """Start a process that takes an exclusive lock on the registry file; released at the
    end at the latest. In WAL mode the lock needs every other connection to the file closed,
    so the pools of this test and of the broker are emptied until the holder has it."""
    path = sqlite_engine.url.database
    assert path is not None
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    lock = Lock(holder)
    yield lock
    if holder.poll() is None:
        lock.release()


def take(lock: Lock, engines: list[Engine], timeout: float = 20.0) -> None:
    stdout = lock.process.stdout
    assert stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for engine in engines:
            engine.dispose()
        if select.select([stdout], [], [], 0.05)[0]:
            assert stdout.readline() == "locked\n"
            return
    pytest.fail("the lock holder never got the registry file to itself")


@pytest.mark.slow
def test_registry_locked_by_another_process_fails_closed_and_recovers(
        start_broker: StartBroker, enroll: Enroll, sqlite_authority: Authority,
        sqlite_engine: Engine, lock_registry: Lock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock outlasts the broker's database.busy_timeout, so polls fail with "database is
    locked"."""
    monkeypatch.setattr(fleet.broker.backend, "MAX_AUDIT_BACKLOG", 2)
    broker, port = metrics_broker(start_broker, busy_timeout=BUSY_TIMEOUT)
    assert broker.server is not None
    server = broker.server
    revoked_credentials, newcomer = enroll("d1"), enroll("d2")
    with Clients(broker) as clients:
        revoked, bystander = clients.connect(revoked_credentials), clients.connect(enroll("d3"))
        take(lock_registry, [sqlite_engine, server._backend.authority.engine])
        stale(port)
        # Refused at once, each: the audit writes they queue wait on the lock (5 s each) in a
        # thread of their own, and beyond the backlog of 2 they are logged and counted.
        for _ in range(5):
            clients.connect(newcomer, expect=SERVER_UNAVAILABLE)
        assert metric(port, "fleet_broker_audit_events_dropped_total",
                      action="broker.connect") == 3
        assert wait_until(lambda: total(port, FAILURES) >= 2, timeout=30)
        error = str(healthz(port)[1]["last_poll_error"])
        assert "database is locked" in error
        assert not bystander.disconnected.is_set()
        assert not revoked.disconnected.is_set()
        revocation = threading.Thread(target=sqlite_authority.revoke_device, kwargs={
            "device_id": "d1", "reason": "keyCompromise", "actor": "operator"})
        revocation.start()  # waits for the lock, committed as soon as it is released
        lock_registry.release()
        released = time.monotonic()
        revocation.join(30)
        assert revoked.disconnected.wait(10)
        assert fresh(port)
        recovered = time.monotonic() - released
        clients.connect(newcomer)
        assert not bystander.disconnected.is_set()
    print(f"registry locked: {total(port, FAILURES):g} failed polls ({error}); "
          f"{metric(port, 'fleet_broker_connects_refused_total', connack='0x03'):g} CONNECTs "
          f"refused with 0x03; revocation applied and /healthz 200 {recovered:.2f}s after "
          "the lock was released")


# -- PostgreSQL: the server is stopped, then started again -------------------------------

@dataclass
class Cluster:
    directory: Path
    url: str

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(PG_SH), command, str(self.directory)],
                              capture_output=True, text=True, timeout=120)


@pytest.fixture
def own_postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test's own, which it may stop (never the shared one).
    Without PostgreSQL binaries the test skips, which fails it under CI=true."""
    directory = Path(tempfile.mkdtemp(prefix="fleet-pg-outage-"))
    cluster = Cluster(directory, "")
    started = cluster.run("start")
    try:
        if started.returncode != 0:
            pytest.skip(f"cannot start a PostgreSQL cluster: {started.stderr.strip()}")
        cluster.url = started.stdout.strip().removeprefix("export FLEET_TEST_POSTGRES_URL=")
        yield cluster
    finally:
        cluster.run("stop")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_authority(own_postgres: Cluster, sqlite_authority: Authority) -> Iterator[Authority]:
    engine = make_engine(own_postgres.url, pool_size=2)
    migrate(engine)
    yield Authority(settings=sqlite_authority.settings.with_overrides(
        database_url=own_postgres.url), engine=engine, ca=sqlite_authority.ca)
    engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_stopped_fails_closed_and_recovers_when_it_is_back(
        start_broker: StartBroker, enroll: Enroll, own_postgres: Cluster,
        postgres_authority: Authority) -> None:
    broker, port = metrics_broker(start_broker, database_url=own_postgres.url)
    assert broker.server is not None
    watcher = broker.server.watcher
    connected, newcomer = enroll("d1", authority=postgres_authority), \
        enroll("d2", authority=postgres_authority)
    with Clients(broker) as clients:
        device = clients.connect(connected)
        assert own_postgres.run("stop").returncode == 0
        report = stale(port)
        assert str(report["last_poll_error"]).startswith("RegistryUnavailableError")
        assert wait_until(lambda: metric(port, FAILURES, error="RegistryUnavailableError") >= 4)
        clients.connect(newcomer, expect=SERVER_UNAVAILABLE)
        assert not device.disconnected.is_set()
        started = own_postgres.run("start")
        assert started.returncode == 0, started.stderr
        back = time.monotonic()
        polls: list[float] = []

        def first_poll_succeeded() -> bool:
            if not broker.run(lambda: watcher.failures == 0):
                return False
            polls.append(time.monotonic() - back)
            return True

        first_poll = threading.Thread(target=wait_until, args=(first_poll_succeeded, 15))
        first_poll.start()
        admitted: float | None = None
        refused = 0
        while admitted is None and time.monotonic() - back < 15:
            attempt = Client(broker.port, newcomer)
            try:
                code = attempt.connect()
            finally:
                attempt.close()
            if code == 0:
                admitted = time.monotonic() - back
            else:
                assert code == SERVER_UNAVAILABLE
                refused += 1
        first_poll.join(15)
        assert admitted is not None, "no CONNECT admitted within 15 s of PostgreSQL being back"
        [polled] = polls
        assert fresh(port)
        assert not device.disconnected.is_set()
        postgres_authority.revoke_device(device_id="d1", reason="keyCompromise",
                                         actor="operator")
        assert device.disconnected.wait(2)
    print(f"PostgreSQL stopped: {total(port, FAILURES):g} failed polls; once it was back, "
          f"first successful poll within {polled:.2f}s, first CONNECT admitted after "
          f"{admitted:.2f}s ({refused} refused with 0x03 meanwhile)")
