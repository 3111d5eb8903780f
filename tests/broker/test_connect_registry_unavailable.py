"""A CONNECT the registry cannot decide is refused with CONNACK 0x03 (server unavailable).

The broker runs on a PostgreSQL cluster of its own, which is stopped once a device has been
admitted: the admission's registry query of a device it has not admitted yet (so not in the
admission cache) then fails and its CONNECT reads 0x03, logged with the registry's error.
``broker.revocation_max_staleness`` is set far beyond the test, so the refusal cannot come
from the revocation watcher's staleness check (also 0x03).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.authority import Authority, ConnectReturnCode
from fleet.ca import CA
from fleet.registry import make_engine, migrate
from fleet.settings import Settings

from .conftest import Enroll, StartBroker
from .helpers import connect_packet, read_connack, received_until_closed, tls_socket

PG_SH = Path(__file__).resolve().parents[1] / "pg.sh"


class Cluster:
    """A throw-away PostgreSQL cluster (tests/pg.sh) on a free loopback port."""

    def __init__(self) -> None:
        # Under /tmp, not the test's tmp_path: the server runs as postgres, which must
        # reach the directory.
        self.directory = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        started = subprocess.run(["bash", str(PG_SH), "start", str(self.directory)],
                                 capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            shutil.rmtree(self.directory, ignore_errors=True)
            pytest.fail(f"tests/pg.sh start failed: {started.stderr.strip()}")
        self.url = started.stdout.strip().rpartition("=")[2]

    def stop(self) -> None:
        subprocess.run(["bash", str(PG_SH), "stop", str(self.directory)], check=True,
                       timeout=120)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


def test_connect_refused_server_unavailable_when_the_registry_query_fails(
        cluster: Cluster, settings: Settings, ca: CA, enroll: Enroll,
        start_broker: StartBroker, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(cluster.url)
    migrate(engine)
    authority = Authority(settings=settings.with_overrides(database_url=cluster.url),
                          engine=engine, ca=ca)
    device = enroll("d1", authority=authority)
    other = enroll("d2", authority=authority)
    engine.dispose()
    broker = start_broker(database_url=cluster.url, revocation_max_staleness="1h")
    with tls_socket(broker.port, device) as sock:
        sock.sendall(connect_packet("d1"))
        assert read_connack(sock) == ConnectReturnCode.ACCEPTED

    cluster.stop()
    caplog.set_level(logging.INFO, logger="fleet.broker")
    with tls_socket(broker.port, other) as sock:
        sock.sendall(connect_packet("d2"))
        assert read_connack(sock) == ConnectReturnCode.SERVER_UNAVAILABLE
        assert received_until_closed(sock, 5) == b""
    refusals = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("refused broker.connect")]
    assert len(refusals) == 1
    assert "registry database unavailable" in refusals[0]


def test_admission_cache_not_trusted_once_a_revocation_poll_failed(
        cluster: Cluster, settings: Settings, ca: CA, enroll: Enroll,
        start_broker: StartBroker) -> None:
    """A device the admission cache holds is not admitted from it while the registry is out of
    reach: from the watcher's first failed poll its CONNECT asks the registry, and reads 0x03."""
    engine = make_engine(cluster.url)
    migrate(engine)
    authority = Authority(settings=settings.with_overrides(database_url=cluster.url),
                          engine=engine, ca=ca)
    device = enroll("d1", authority=authority)
    engine.dispose()
    broker = start_broker(database_url=cluster.url, revocation_max_staleness="1h")
    assert broker.server is not None
    watcher = broker.server.watcher
    with tls_socket(broker.port, device) as sock:
        sock.sendall(connect_packet("d1"))
        assert read_connack(sock) == ConnectReturnCode.ACCEPTED
    assert broker.wait_for(lambda: watcher.admissions.hit(device.serial) is not None)

    cluster.stop()
    assert broker.wait_for(lambda: watcher.failures > 0)
    with tls_socket(broker.port, device) as sock:
        sock.sendall(connect_packet("d1"))
        assert read_connack(sock) == ConnectReturnCode.SERVER_UNAVAILABLE
