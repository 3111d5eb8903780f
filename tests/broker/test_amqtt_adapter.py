"""What Fleet relies on in amqtt beyond its documented API (fleet.broker.amqtt_adapter)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pytest
from amqtt.mqtt.connect import ConnectPacket

from fleet.broker import amqtt_adapter
from fleet.broker.server import start
from fleet.settings import Settings

from .conftest import Enroll
from .helpers import (
    BrokerThread,
    Clients,
    Credentials,
    connect_packet,
    read_connack,
    tls_socket,
    wait_until,
)
from .quota_helpers import read_packet

REFUSED = 0x80


def test_amqtt_topic_check_is_never_reached(enroll: Enroll,
                                            issue_service: Callable[[str], Credentials],
                                            broker: BrokerThread) -> None:
    """No topic plugin is loaded, so amqtt's own topic check (``Broker._topic_filtering``)
    would let everything through: PUBLISH, SUBSCRIBE, deliveries, retained messages and wills
    must all be decided by Fleet's checks, on paths that never reach it."""
    assert broker.server is not None
    reached: list[tuple[str, Any]] = []

    async def spy(session: object, topic: str, action: object) -> bool:
        reached.append((topic, action))
        return False

    broker.server.broker._topic_filtering = spy
    with Clients(broker) as clients:
        monitor = clients.connect(issue_service("monitor"))
        assert monitor.subscribe("devices/+/state", "devices/#") == [1, REFUSED]
        control = clients.connect(issue_service("control"))
        control.publish("devices/d1/commands/open", b"retained", qos=1, retain=True)
        device = clients.connect(enroll("d1"))
        assert device.subscribe("devices/d1/commands/#", "devices/+/commands/#") == [1, REFUSED]
        message = device.receive()
        assert message is not None
        assert (message.payload, message.retain) == (b"retained", True)
        control.publish("devices/d1/commands/close", b"live", qos=1)
        message = device.receive()
        assert message is not None
        assert message.payload == b"live"
        device.publish("devices/d1/state", b"up", qos=1)
        device.publish("devices/d2/state", b"not mine", qos=1)
        message = monitor.receive()
        assert message is not None
        assert (message.topic, message.payload) == ("devices/d1/state", b"up")
        with tls_socket(broker.port, enroll("d2")) as sock:
            sock.sendall(connect_packet("d2", will=("devices/d2/state", b"gone")))
            assert read_connack(sock) == 0
        message = monitor.receive()  # d2's will: its socket closed without DISCONNECT
        assert message is not None
        assert (message.topic, message.payload) == ("devices/d2/state", b"gone")
        assert monitor.receive(timeout=0.3) is None  # d1's PUBLISH to d2's topic was dropped
    assert reached == []


def test_version_check_accepts_the_release_it_was_written_for() -> None:
    assert metadata.version("amqtt") == amqtt_adapter.AMQTT_VERSION == "0.12.1"
    amqtt_adapter.check_version()


@pytest.mark.parametrize("installed", ["0.12.0", "0.12.2", "0.13.0", "1.0.0"])
def test_version_check_refuses_another_release(installed: str) -> None:
    with pytest.raises(amqtt_adapter.AmqttVersionError) as refused:
        amqtt_adapter.check_version(installed)
    assert str(refused.value).startswith(f"amqtt {installed} is installed, but Fleet's broker "
                                         "is written for amqtt 0.12.1")


def test_broker_refuses_to_start_on_another_amqtt(settings: Settings,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed distribution's version is asked at start, before anything is opened."""
    version = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda name: "0.13.0" if name == "amqtt" else version(name))
    with pytest.raises(amqtt_adapter.AmqttVersionError, match=r"^amqtt 0\.13\.0 is installed"):
        asyncio.run(start(settings, host="127.0.0.1", port=0))


def test_connect_is_parsed_once_by_the_gate(enroll: Enroll,
                                            issue_service: Callable[[str], Credentials],
                                            broker: BrokerThread,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """amqtt never reads a CONNECT: the session (client id, clean session, will) is made from
    the gate's parse, for a new session and a resumed one."""
    parsed: list[object] = []

    async def second_parse(*args: object, **kwargs: object) -> None:
        parsed.append(args)
        raise AssertionError("amqtt parsed a CONNECT")

    monkeypatch.setattr(ConnectPacket, "from_stream", second_parse)
    credentials = enroll("d1")
    with Clients(broker) as clients:
        monitor = clients.connect(issue_service("monitor"))
        assert monitor.subscribe("devices/+/state") == [1]
        first = clients.connect(credentials, clean_session=False)
        assert first.session_present is False
        first.close()
        assert wait_until(lambda: broker.connection_count() == 1)
        with tls_socket(broker.port, credentials) as sock:
            sock.sendall(connect_packet("d1", flags=0,  # clean session 0, a retained will
                                        will=("devices/d1/state", b"resumed, then gone")))
            assert read_packet(sock) == bytes((0x20, 0x02, 0x01, 0x00))  # session present
            assert broker.run(lambda: stored_will(broker)) == (
                "devices/d1/state", b"resumed, then gone", True, False, 1)
        message = monitor.receive()  # the socket closed without DISCONNECT
        assert message is not None
        assert (message.topic, message.payload) == ("devices/d1/state", b"resumed, then gone")
    assert parsed == []


def stored_will(broker: BrokerThread) -> tuple[object, ...]:
    """d1's will (topic, message, retain), clean session flag and ``parent`` (1: resumed)."""
    assert broker.server is not None
    session = broker.server.broker.sessions["d1"][0]
    return (session.will_topic, session.will_message, session.will_retain,
            session.clean_session, session.parent)
