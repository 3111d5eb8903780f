"""A link that drops in the middle of a QoS 2 flow: the device reconnects at once (its CONNACK
does not wait for the connection the broker still holds), and the message is delivered exactly
once, in both directions and wherever the flow was cut (MQTT-4.3.3, MQTT-4.4.0-1).

The device is a paho client reaching the broker through a :class:`~.link.Link`; the link holds
one direction so the flow stops exactly where each case wants it, then drops: the device sees
its connection close, the broker's side stays open. paho's log shows what the device sent and
received. Each case runs nine times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest

from fleet.broker.amqtt_adapter import FleetSession

from .conftest import Enroll
from .helpers import BrokerThread, Client, Clients, Credentials, wait_until
from .link import DOWN, UP, Link
from .test_s8_reset_after_connack import hold_after_connack, reset_on_connack

COMMANDS = "devices/d1/commands/#"
COMMAND = "devices/d1/commands/open"
TELEMETRY = "devices/d1/telemetry"
RUNS = 9
QOS2 = 2


class PacketLog:
    """The packets paho reports sending and receiving (its log), for waiting on the flow."""

    def __init__(self, client: Client) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        client.paho.on_log = self._add

    def _add(self, paho: mqtt.Client, userdata: object, level: int, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()

    def saw(self, prefix: str) -> bool:
        with self._lock:
            return any(line.startswith(prefix) for line in self._lines)

    def wait(self, prefix: str) -> None:
        assert wait_until(lambda: self.saw(prefix)), f"the device never logged {prefix!r}"


class Flow:
    """One device on a link, a service, and the broker's view of the device's session."""

    def __init__(self, broker: BrokerThread, link: Link, device: Client, control: Client,
                 log: PacketLog) -> None:
        self.broker, self.link, self.device, self.control, self.log = (
            broker, link, device, control, log)

    def _session(self) -> FleetSession:
        assert self.broker.server is not None
        session: FleetSession = self.broker.server.broker.sessions["d1"][0]
        return session

    def broker_holds_inbound(self, count: int) -> None:
        """Wait until the broker holds *count* unreleased QoS 2 messages from the device."""
        assert self.broker.wait_for(lambda: len(self._session().unreleased) == count)

    def broker_released_outbound(self) -> None:
        """Wait until the broker has its PUBREC for the delivery (and sent PUBREL)."""
        assert self.broker.wait_for(lambda: any(
            flight.released for flight in self._session().inflight()))

    def broker_idle(self) -> bool:
        return self.broker.wait_for(lambda: not self._session().inflight()
                                    and not len(self._session().unreleased))


# Each cut: what runs before the link drops. "Receive" cases: the service publishes to the
# device; "publish" cases: the device publishes to the service.

def receive_before_pubrec(flow: Flow, payload: bytes) -> None:
    flow.link.hold(UP)
    flow.control.publish(COMMAND, payload, qos=QOS2)
    flow.log.wait("Sending PUBREC")  # the device has the PUBLISH; its PUBREC never arrives


def receive_before_pubrel(flow: Flow, payload: bytes) -> None:
    receive_before_pubrec(flow, payload)
    flow.link.hold(DOWN)
    flow.link.release(UP)
    flow.broker_released_outbound()  # the broker has the PUBREC; its PUBREL never arrives


def receive_before_pubcomp(flow: Flow, payload: bytes) -> None:
    receive_before_pubrel(flow, payload)
    flow.link.hold(UP)
    flow.link.release(DOWN)
    flow.log.wait("Sending PUBCOMP")  # the device has the PUBREL; its PUBCOMP never arrives


def publish_before_pubrec(flow: Flow, payload: bytes) -> None:
    flow.link.hold(DOWN)
    flow.device.paho.publish(TELEMETRY, payload, qos=QOS2)
    flow.broker_holds_inbound(1)  # the broker has the PUBLISH; its PUBREC never arrives


def publish_before_pubrel(flow: Flow, payload: bytes) -> None:
    publish_before_pubrec(flow, payload)
    flow.link.hold(UP)
    flow.link.release(DOWN)
    flow.log.wait("Sending PUBREL")  # the device has the PUBREC; its PUBREL never arrives


def publish_before_pubcomp(flow: Flow, payload: bytes) -> None:
    publish_before_pubrel(flow, payload)
    flow.link.hold(DOWN)
    flow.link.release(UP)
    flow.broker_holds_inbound(0)  # released and routed; the PUBCOMP never arrives


CUTS = [receive_before_pubrec, receive_before_pubrel, receive_before_pubcomp,
        publish_before_pubrec, publish_before_pubrel, publish_before_pubcomp]


@pytest.fixture
def flow(enroll: Enroll, issue_service: Callable[[str], Credentials],
         broker: BrokerThread) -> Iterator[Flow]:
    link = Link(broker.port)
    with Clients(broker) as clients:
        control = clients.connect(issue_service("control"))
        assert control.subscribe(TELEMETRY.replace("d1", "+"), qos=QOS2) == [QOS2]
        device = Client(link.port, enroll("d1"), clean_session=False)
        log = PacketLog(device)
        try:
            assert device.connect() == 0
            assert device.subscribe(COMMANDS, qos=QOS2) == [QOS2]
            yield Flow(broker, link, device, control, log)
        finally:
            device.close()
            link.close()


def reconnect(flow: Flow) -> None:
    """The device sees its connection close and connects again, keeping its session."""
    assert flow.device.disconnected.wait(5)
    limit = flow.broker.settings.connect_timeout.total_seconds()
    started = time.monotonic()
    assert flow.device.connect(2 * limit) == 0
    waited = time.monotonic() - started
    assert waited < limit, f"CONNACK after {waited:.1f}s: it waited for the lost connection"
    assert flow.device.session_present is True


def delivered_once(flow: Flow, cut: Callable[[Flow, bytes], None], payload: bytes) -> None:
    receiver = flow.device if cut.__name__.startswith("receive") else flow.control
    message = receiver.receive()
    assert message is not None, f"{payload!r} never delivered"
    assert message.payload == payload
    assert message.qos == QOS2
    assert receiver.receive(timeout=0.3) is None, f"{payload!r} delivered twice"
    assert flow.broker_idle()


@pytest.mark.parametrize("cut", CUTS, ids=lambda cut: cut.__name__)
def test_qos2_flow_cut_by_a_link_drop_completes_once_after_reconnect(
        flow: Flow, cut: Callable[[Flow, bytes], None]) -> None:
    for run in range(RUNS):
        payload = f"{cut.__name__} {run}".encode()
        flow.log.clear()
        cut(flow, payload)
        flow.link.drop()
        reconnect(flow)
        delivered_once(flow, cut, payload)


@pytest.mark.parametrize("cut", [receive_before_pubrel, publish_before_pubrel],
                         ids=lambda cut: cut.__name__)
def test_qos2_flow_survives_a_link_that_fails_again_right_after_reconnecting(
        flow: Flow, cut: Callable[[Flow, bytes], None]) -> None:
    # The first reconnect is reset as soon as its CONNACK arrives (S8); the second one must
    # neither wait for it nor find the session marked disconnected.
    for run in range(3):
        payload = f"{cut.__name__} {run}".encode()
        flow.log.clear()
        cut(flow, payload)
        flow.link.drop()
        assert flow.device.disconnected.wait(5)
        connected = flow.device.paho.on_connect
        flow.device.paho.on_connect = reset_on_connack
        with hold_after_connack(flow.broker):
            flow.device.connect()
            assert flow.device.disconnected.wait(5)
        flow.device.paho.on_connect = connected
        reconnect(flow)
        delivered_once(flow, cut, payload)
