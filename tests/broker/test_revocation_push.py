"""On PostgreSQL the broker's watcher is woken by the NOTIFY of each revocation event: with a
poll interval of a minute a revoked device's live session is still dropped within a second,
also after the listening connection was killed; on SQLite the watcher polls."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from fleet.authority import Authority

from .conftest import Enroll, StartBroker
from .helpers import BrokerThread, Client, wait_until
from .test_revocation import dropped_within

SLOW_POLLS = {"revocation_poll_interval": "60s", "revocation_max_staleness": "120s"}


@pytest.fixture
def pushed_broker(authority: Authority, start_broker: StartBroker) -> BrokerThread:
    broker = start_broker(
        database_url=authority.engine.url.render_as_string(hide_password=False), **SLOW_POLLS)
    assert broker.server is not None
    wakeup = broker.server.watcher.wakeup
    assert wakeup.pushed
    assert wait_until(lambda: broker.run(lambda: wakeup.listening))
    return broker


@pytest.fixture
def device(pushed_broker: BrokerThread, authority: Authority, enroll: Enroll) -> Iterator[Client]:
    client = Client(pushed_broker.port, enroll("d1", authority=authority))
    assert client.connect() == 0
    yield client
    client.close()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_revocation_pushed_drops_the_session_within_a_second_with_a_minute_poll_interval(
        authority: Authority, device: Client) -> None:
    authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    assert dropped_within(device, 1.0) is not None


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_revocation_pushed_again_after_the_listening_backend_is_terminated(
        authority: Authority, pushed_broker: BrokerThread, device: Client) -> None:
    assert pushed_broker.server is not None
    wakeup = pushed_broker.server.watcher.wakeup
    killed = pushed_broker.run(lambda: wakeup.backend_pid)
    with authority.engine.begin() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"),
                                  {"pid": killed}).scalar_one()
    assert wait_until(lambda: pushed_broker.run(lambda: wakeup.reconnects == 1
                                                and wakeup.listening))
    assert pushed_broker.run(lambda: wakeup.backend_pid) != killed
    authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    assert dropped_within(device, 1.0) is not None


def test_revocation_on_sqlite_is_polled(broker: BrokerThread, enroll: Enroll,
                                        sqlite_authority: Authority,
                                        connect: Callable[..., Client]) -> None:
    assert broker.server is not None
    assert not broker.server.watcher.wakeup.pushed
    device = connect(enroll("d1"))
    sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    assert dropped_within(device, 1.0) is not None


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_revocation_push_off_polls_only(authority: Authority, start_broker: StartBroker,
                                        enroll: Enroll) -> None:
    """broker.revocation_push = false (a pooler that cannot LISTEN): no listening
    connection, the poll alone drops the session."""
    broker = start_broker(database_url=authority.engine.url.render_as_string(
        hide_password=False), revocation_push="false")
    assert broker.server is not None
    assert not broker.server.watcher.wakeup.pushed
    device = Client(broker.port, enroll("d1", authority=authority))
    try:
        assert device.connect() == 0
        authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        assert dropped_within(device, 1.0) is not None
    finally:
        device.close()
