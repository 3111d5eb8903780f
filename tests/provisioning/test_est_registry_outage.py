"""The registry database down, then back: EST answers 503 + Retry-After with a plain reason,
changes nothing, logs one line per refused request, and recovers by itself."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID
from est_support import EST, Est, EstFactory, Reply, make_csr
from registry_outage import PostgresCluster, registry_lock

from provisioning.refusals import REGISTRY_RETRY_AFTER

BUSY_TIMEOUT = {"FLEET_DATABASE_BUSY_TIMEOUT": "300ms"}


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


def expect_unavailable(name: str, reply: Reply) -> None:
    assert reply.status == 503, (name, reply.status, reply.text)
    assert reply.headers["Retry-After"] == str(REGISTRY_RETRY_AFTER), name
    assert reply.headers["Content-Type"].startswith("text/plain"), name
    assert reply.text == "registry database unavailable; retry later\n", name


class Requests:
    """The same enrollment, renewal and CRL requests, sent during the outage and after it."""

    def __init__(self, est: Est) -> None:
        self.est = est
        self.device = est.device("dev-renew")
        self.token = est.token()
        self.enroll_csr = make_csr("dev-new")
        self.renew_csr = make_csr("dev-renew", self.device.key)

    def send(self, *names: str) -> dict[str, Reply]:
        est = self.est
        send = {
            "simpleenroll": lambda: est.enroll(self.enroll_csr, self.token),
            "simplereenroll": lambda: est.reenroll(self.renew_csr, self.device),
            "crl": lambda: est.get("/crl"),
            "healthz": lambda: est.get("/healthz"),
            "cacerts": lambda: est.get(f"{EST}/cacerts"),
        }
        return {name: send[name]() for name in names}


ALL = ("simpleenroll", "simplereenroll", "crl", "healthz", "cacerts")
WRITES = {"simpleenroll", "simplereenroll", "crl"}  # a CRL is signed with a new CRL number


def test_refused_registry_locked_beyond_busy_timeout_503_then_same_request_succeeds(
    make_est: EstFactory, data_dir: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process holds the SQLite write lock longer than database.busy_timeout: every
    request that writes is refused with 503 and changes nothing (token unused, no certificate,
    no audit row); what only reads (WAL readers do not wait for a writer) or needs no database
    is served. Once the lock is gone, the very same requests succeed."""
    est = make_est(**BUSY_TIMEOUT)
    requests = Requests(est)
    state, audited = est.snapshot(), len(est.audit())
    caplog.clear()
    with registry_lock(data_dir / "fleet.db"), caplog.at_level(logging.INFO):
        during = requests.send(*ALL)
    for name in WRITES:
        expect_unavailable(name, during[name])
    assert all(during[name].status == 200 for name in set(ALL) - WRITES), \
        {name: during[name].status for name in ALL}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == len(WRITES), [r.getMessage() for r in warnings]
    assert all(r.name == "provisioning" and r.exc_info is None for r in warnings)
    assert all("held by another connection beyond the busy timeout" in r.getMessage()
               for r in warnings)
    assert est.snapshot() == state
    assert len(est.audit()) == audited
    after = requests.send(*ALL)
    assert {name: reply.status for name, reply in after.items()} == dict.fromkeys(ALL, 200)
    [issued] = after["simpleenroll"].certificates()
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-new"
    assert [e.action for e in est.audit()[audited:]] == ["enroll", "reenroll"]


@pytest.mark.postgres
@pytest.mark.slow
def test_refused_postgres_stopped_503_then_recovers_without_restart(
    postgres_cluster: PostgresCluster, make_est: EstFactory,
) -> None:
    """The PostgreSQL server stops under a running EST service: 503 + Retry-After and no
    change; it starts again: the next request succeeds, with the same service process."""
    est = make_est(postgres_cluster.start())
    requests = Requests(est)
    state, audited = est.snapshot(), len(est.audit())
    assert requests.send("healthz")["healthz"].status == 200  # the pool holds a connection
    postgres_cluster.stop()
    during = requests.send(*ALL)
    for name in ("simpleenroll", "simplereenroll", "crl", "healthz"):
        expect_unavailable(name, during[name])
    assert during["cacerts"].status == 200
    started = time.monotonic()
    postgres_cluster.start()
    ready = time.monotonic()
    first = requests.send("simpleenroll")["simpleenroll"]
    answered = time.monotonic()
    assert first.status == 200, first.text
    print(f"PostgreSQL start took {ready - started:.2f}s; the first enrollment after it was "
          f"answered {answered - ready:.3f}s later ({answered - started:.2f}s in all)")
    assert est.snapshot() != state  # the enrollment is the only change
    assert [e.action for e in est.audit()[audited:]] == ["enroll"]
    after = requests.send("simplereenroll", "crl", "healthz")
    assert {name: reply.status for name, reply in after.items()} == dict.fromkeys(after, 200)
