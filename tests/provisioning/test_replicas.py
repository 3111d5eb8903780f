"""EST as stateless replicas on one PostgreSQL: real ``fleet serve est`` processes, real TLS.

Each test gets a PostgreSQL database of its own and starts two replicas on it (one of them
with ``--workers 2`` where that is said), sharing the data dir's CA as every replica must.
Requests alternate between the replicas; what must hold across them is read back from the
registry: a token is used once, serials are unique, CRL numbers strictly increase and the
audit log stays one hash chain.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import re
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli.helpers import FLEET_SCRIPT, service_env
from cryptography import x509
from est_support import EST, PKCS10, Est, b64, make_csr, simultaneously
from sqlalchemy.engine import Engine
from sqlmodel import select

from fleet.audit import RefusalDigest
from fleet.authority import Authority, serial_hex
from fleet.ca import CA
from fleet.registry import events as events_db
from fleet.registry import make_engine, migrate
from fleet.registry.engine import session as new_session
from fleet.registry.models import BootstrapToken, Certificate, CertificateStatus, Device
from fleet.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

READY = re.compile(r"^EST listening on https://127\.0\.0\.1:(\d+)/\.well-known/est$")
LIMITS = {"FLEET_EST_AUTH_FAILURES_PER_MINUTE": "1000",
          "FLEET_EST_MAX_REQUESTS_PER_SOURCE": "64"}
"""Every client here is 127.0.0.1: let all of a test's requests be in progress at once."""


@pytest.fixture
def replica_url(postgres_database: str) -> str:
    """The registry of the replicas: a database of the test's own, migrated."""
    engine = make_engine(postgres_database, pool_size=1)
    migrate(engine)
    engine.dispose()
    return postgres_database


@dataclasses.dataclass
class Replicas:
    """Replicas running on one registry, and a client of each."""

    clients: list[Est]
    processes: list[subprocess.Popen[str]]

    def stop(self) -> None:
        """SIGTERM every replica; each must exit 0 (its last audit checkpoint written)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            assert process.wait(30) == 0


ReplicaFactory = Callable[..., Replicas]


@pytest.fixture
def replicas(data_dir: Path, ca: CA, tmp_path: Path,
             replica_url: str) -> Iterator[ReplicaFactory]:
    """``replicas(2, workers=1)``: that many ``fleet serve est`` processes on *replica_url*."""
    settings = load_settings(environ={"FLEET_DATA_DIR": str(data_dir),
                                      "FLEET_DATABASE_URL": replica_url})
    engine = make_engine(replica_url, pool_size=8)
    authority = Authority(settings=settings, engine=engine, ca=ca)
    authority.ensure_group(name="sensors", actor="operator")
    started: list[subprocess.Popen[str]] = []

    def factory(count: int, *, workers: int = 1) -> Replicas:
        env = service_env(data_dir, FLEET_DATABASE_URL=replica_url,
                          FLEET_EST_METRICS_PORT="-1", **LIMITS)
        clients, processes = [], []
        for _ in range(count):
            log = (tmp_path / f"replica-{len(started)}.log").open("w")  # never a full pipe
            process = subprocess.Popen(
                [str(FLEET_SCRIPT), "serve", "est", "--port", "0", "--workers", str(workers)],
                env=env, text=True, stdout=subprocess.PIPE, stderr=log)
            log.close()
            started.append(process)
            processes.append(process)
            port = _ready_port(process, tmp_path / f"replica-{len(started) - 1}.log")
            clients.append(Est(settings=settings, authority=authority, port=port,
                               metrics_port=None, tmp=tmp_path, engine=engine,
                               digest=RefusalDigest(interval=60, max_sources=1)))
        return Replicas(clients, processes)

    yield factory
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    engine.dispose()


def _ready_port(process: subprocess.Popen[str], log: Path) -> int:
    assert process.stdout is not None
    line = process.stdout.readline().rstrip("\n")
    match = READY.match(line)
    assert match, f"replica did not start (rc={process.poll()}): {line!r} {log.read_text()}"
    return int(match.group(1))


def _basic(token: str, username: str = "") -> dict[str, str]:
    credential = base64.b64encode(f"{username}:{token}".encode()).decode()
    return {**PKCS10, "Authorization": f"Basic {credential}"}


def _certificates(engine: Engine) -> list[Certificate]:
    with new_session(engine) as session:
        return list(session.exec(select(Certificate)).all())


def test_single_use_token_sent_to_two_replicas_60_times_at_once_issues_once(
        replicas: ReplicaFactory) -> None:
    fleet = replicas(2)
    est = fleet.clients[0]
    token = est.token()
    before = est.snapshot()
    contexts = [client.context() for client in fleet.clients]
    statuses = simultaneously([
        (fleet.clients[i % 2].port, f"{EST}/simpleenroll", b64(make_csr(f"racer-{i}")),
         _basic(token), contexts[i % 2]) for i in range(60)])
    assert statuses == Counter({200: 1, 401: 59})
    [issued] = _certificates(est.engine)
    devices, certificates, tokens = est.snapshot()
    assert len(devices) == len(before[0]) + 1
    assert certificates == [(issued.serial, CertificateStatus.ACTIVE)]
    assert [uses for _id, uses, _revoked in tokens] == [0]
    assert len([e for e in est.audit("enroll") if e.outcome == "ok"]) == 1
    refusals = est.refusals("enroll")
    assert len(refusals) == 59
    assert {r.reason for r in refusals} == {"TokenError: bootstrap token already used"}


def test_storm_of_200_enrollments_over_two_replicas_keeps_every_record(
        replicas: ReplicaFactory, data_dir: Path, replica_url: str) -> None:
    fleet = replicas(2, workers=2)
    est = fleet.clients[0]
    devices = [f"storm-{i:03d}" for i in range(200)]
    tokens = {device_id: est.token() for device_id in devices}

    def enroll(index: int) -> tuple[str, int, x509.Certificate | None]:
        device_id = devices[index]
        reply = fleet.clients[index % 2].enroll(make_csr(device_id), tokens[device_id],
                                                username=device_id)
        return device_id, reply.status, reply.certificates()[0] if reply.status == 200 else None

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(enroll, range(len(devices))))
    assert Counter(status for _d, status, _c in outcomes) == Counter({200: len(devices)})
    served = {device_id: serial_hex(cert.serial_number) for device_id, _s, cert in outcomes
              if cert is not None}
    assert len(set(served.values())) == len(devices)  # serials unique

    rows = {row.serial: row for row in _certificates(est.engine)}
    assert {serial: rows[serial].device_id for serial in served.values()} == \
        {serial: device_id for device_id, serial in served.items()}
    with new_session(est.engine) as session:
        assert {d.id: d.status for d in session.exec(select(Device))} == \
            dict.fromkeys(devices, "active")
        used = {t.id: t.uses_left for t in session.exec(select(BootstrapToken))}
    token_ids = {device_id: token.split(".")[0] for device_id, token in tokens.items()}
    assert set(used) == set(token_ids.values())
    assert set(used.values()) == {0}
    events = {e.device_id: e for e in est.audit("enroll") if e.outcome == "ok"}
    assert set(events) == set(devices)
    for device_id, event in events.items():
        assert event.serial == served[device_id]
        assert event.detail is not None
        assert f'"token_id": "{token_ids[device_id]}"' in event.detail

    fleet.stop()  # their last checkpoints written
    with new_session(est.engine) as session:
        assert events_db.verify_audit_chain(session=session).problem is None
    verify = subprocess.run(
        [str(FLEET_SCRIPT), "audit", "verify"], capture_output=True, text=True, timeout=120,
        env=service_env(data_dir, FLEET_DATABASE_URL=replica_url))
    assert verify.returncode == 0, (verify.stdout, verify.stderr)


def test_crl_numbers_from_two_replicas_strictly_increase_while_devices_are_revoked(
        replicas: ReplicaFactory) -> None:
    fleet = replicas(2)
    est = fleet.clients[0]
    devices = [est.device(f"rev-{i:02d}") for i in range(12)]
    serials = [serial_hex(d.certificate.serial_number) for d in devices]
    fetched: list[x509.CertificateRevocationList] = []
    done = threading.Event()
    lock = threading.Lock()

    def fetch(client: Est) -> None:
        while not done.is_set():
            reply = client.get("/crl")
            assert reply.status == 200, reply.text
            with lock:
                fetched.append(x509.load_der_x509_crl(reply.body))

    def revoke(half: list[str]) -> None:
        for serial in half:
            est.authority.revoke_certificate(serial=serial, reason="cessationOfOperation",
                                             actor="operator")

    with ThreadPoolExecutor(6) as pool:
        fetchers = [pool.submit(fetch, client) for client in fleet.clients * 2]
        revokers = [pool.submit(revoke, serials[0::2]), pool.submit(revoke, serials[1::2])]
        for future in revokers:
            future.result(timeout=120)
        done.set()
        for future in fetchers:
            future.result(timeout=120)
    fetched += [x509.load_der_x509_crl(client.get("/crl").body) for client in fleet.clients]

    listed: dict[int, frozenset[str]] = {}
    for crl in fetched:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        content = frozenset(serial_hex(entry.serial_number) for entry in crl)
        assert listed.setdefault(number, content) == content, f"two CRLs numbered {number}"
    numbers = sorted(listed)
    for lower, higher in itertools.pairwise(numbers):
        assert listed[lower] <= listed[higher], (lower, higher)  # a newer CRL drops nothing
    assert listed[numbers[-1]] == frozenset(serials)
    assert len(numbers) >= len(fleet.clients)  # each replica built its own


def test_renewals_of_each_certificate_raced_over_two_replicas_win_once(
        replicas: ReplicaFactory) -> None:
    fleet = replicas(2)
    est = fleet.clients[0]
    devices = [est.device(f"renew-{i}") for i in range(4)]
    before = {d.device_id: serial_hex(d.certificate.serial_number) for d in devices}
    requests = []
    for device in devices:
        body = b64(make_csr(device.device_id, device.key))
        contexts = [client.context(device) for client in fleet.clients]
        requests += [(fleet.clients[i % 2].port, f"{EST}/simplereenroll", body, dict(PKCS10),
                      contexts[i % 2]) for i in range(10)]
    statuses = simultaneously(requests)
    assert statuses == Counter({200: len(devices), 403: 9 * len(devices)})
    for device in devices:
        rows = [c for c in _certificates(est.engine) if c.device_id == device.device_id]
        states = {c.serial: c.status for c in rows}
        assert states[before[device.device_id]] == CertificateStatus.SUPERSEDED
        [renewed] = [c for c in rows if c.status == CertificateStatus.ACTIVE]
        assert renewed.replaces == before[device.device_id]
    refusals = est.refusals("reenroll")
    assert len(refusals) == 9 * len(devices)
    assert all(r.reason is not None and r.reason.startswith("CertificateNotActiveError")
               for r in refusals), Counter(r.reason for r in refusals)
    ok = [e for e in est.audit("reenroll") if e.outcome == "ok"]
    assert sorted(e.device_id or "" for e in ok) == sorted(before)
