"""One device that tries to exceed every quota at once (retained messages, unreleased QoS 2,
subscriptions, a backlog it never reads, an offline queue, oversized packets) grows the
broker's resident memory by no more than fleet.broker.quotas.pinned_bytes with the defaults
(about 6.3 MiB), while it sends over 100 MB that stock amqtt would keep."""

from __future__ import annotations

import gc
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from broker.conftest import Enroll
from broker.helpers import Credentials, closed_within, connect_packet, tls_socket
from broker.quota_helpers import (
    BrokerProcess,
    publish,
    pubrel,
    raw_client,
    read_packet,
    suback_codes,
    subscribe,
)

from fleet.broker.packets import encode_length
from fleet.broker.quotas import MAX_FILTER_BYTES, MAX_FILTER_LEVELS, Quotas, pinned_bytes
from fleet.settings import Settings

pytestmark = pytest.mark.slow

PAYLOAD = b"m" * 16384
FLOOD = 2000
COMMANDS = "devices/d1/commands/x"


@pytest.fixture
def broker(data_dir: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(data_dir)
    yield process
    process.stop()


def settled_rss(broker: BrokerProcess) -> int:
    """RSS once the broker has finished what it was sent (the lowest of a few samples)."""
    samples = []
    for _ in range(5):
        time.sleep(0.2)
        samples.append(broker.rss())
    return min(samples)


def publish_acknowledged(sock: ssl.SSLSocket, packets: Iterator[bytes]) -> None:
    """Send QoS 1/2 PUBLISH packets and read one acknowledgement for each."""
    sent = 0
    for packet in packets:
        sock.sendall(packet)
        sent += 1
    for _ in range(sent):
        assert read_packet(sock)[0] in (0x40, 0x50)


def filters(count: int) -> list[str]:
    """Filters as costly as allowed: MAX_FILTER_BYTES long, MAX_FILTER_LEVELS deep."""
    result = []
    for n in range(count):
        prefix = f"devices/d1/commands/{n}/" + "a/" * (MAX_FILTER_LEVELS - 5)
        result.append(prefix + "z" * (MAX_FILTER_BYTES - len(prefix)))
    return result


def every_path_once(broker: BrokerProcess, device: Credentials,
                    control: Credentials) -> None:
    """Warm the broker up: each code path runs once, so lazy set-up is not counted."""
    with raw_client(broker.port, device, clean_session=False) as sock:
        sock.sendall(subscribe(*filters(2)))
        suback_codes(sock)
        publish_acknowledged(sock, iter([publish("devices/d1/events/w", PAYLOAD, qos=1,
                                                 retain=True),
                                         publish("devices/d1/telemetry", PAYLOAD, qos=2)]))
        sock.sendall(pubrel(1))
        read_packet(sock)
    with raw_client(broker.port, control) as sock:
        publish_acknowledged(sock, iter([publish(COMMANDS, PAYLOAD, qos=1)]))
    with raw_client(broker.port, device, clean_session=True):
        pass


def test_one_device_pins_at_most_the_stated_bound(
        enroll: Enroll, issue_service: Callable[[str], Credentials], settings: Settings,
        broker: BrokerProcess) -> None:
    bound = pinned_bytes(Quotas.from_settings(settings))
    device, control = enroll("d1"), issue_service("control")
    every_path_once(broker, device, control)
    gc.collect()
    before = settled_rss(broker)

    with raw_client(broker.port, device, clean_session=False) as sock:
        publish_acknowledged(sock, (publish(f"devices/d1/events/{n}", PAYLOAD, qos=1,
                                            retain=True) for n in range(FLOOD)))
        publish_acknowledged(sock, (publish("devices/d1/telemetry", PAYLOAD, qos=2,
                                            packet_id=n + 1) for n in range(FLOOD)))
        for first in range(0, 300, 50):
            sock.sendall(subscribe(*filters(300)[first:first + 50], packet_id=first + 1))
            suback_codes(sock)
    # A connection that stops reading, then leaves: the backlog, then the offline queue.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", broker.port))
    context = ssl.create_default_context(cafile=str(device.ca))
    context.load_cert_chain(str(device.cert), str(device.key))
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as stalled:
        stalled.sendall(connect_packet("d1", flags=0x00))
        assert read_packet(stalled)[3] == 0
        with raw_client(broker.port, control) as sock:
            publish_acknowledged(sock, (publish(COMMANDS, PAYLOAD, qos=1, packet_id=n + 1)
                                        for n in range(FLOOD)))
    with raw_client(broker.port, control) as sock:
        publish_acknowledged(sock, (publish(COMMANDS, PAYLOAD, qos=1, packet_id=n + 1)
                                    for n in range(FLOOD)))
    for _ in range(3):  # 8 MiB packets: refused at their header
        with tls_socket(broker.port, device) as sock:
            sock.sendall(connect_packet("d1", flags=0x00))
            read_packet(sock)
            with suppress(OSError):  # closed while this is still being sent
                sock.sendall(b"\x30" + encode_length(8 * 2**20) + PAYLOAD * 4)
            assert closed_within(sock, 2) is not None

    grown = settled_rss(broker) - before
    print(f"RSS grew by {grown / 2**20:.2f} MiB; bound {bound / 2**20:.2f} MiB")
    assert grown <= bound
