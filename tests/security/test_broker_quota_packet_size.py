"""Packets above broker.max_packet_bytes (256 KiB by default), of every kind the broker reads,
close the connection as soon as their fixed header is read, and each is audited."""

from __future__ import annotations

from contextlib import suppress

import pytest
from broker.conftest import Enroll, StartBroker
from broker.helpers import closed_within, wait_until
from broker.quota_helpers import publish, quota_events, raw_client, read_packet, subscribe
from sqlalchemy.engine import Engine

from fleet.broker.packets import encode_length

pytestmark = pytest.mark.slow

TOPIC = "devices/d1/telemetry"
EIGHT_MIB = 8 * 2**20


def header_of(first: int, remaining: int) -> bytes:
    return bytes((first,)) + encode_length(remaining)


def test_oversized_packets_close_the_connection(
        enroll: Enroll, start_broker: StartBroker, sqlite_engine: Engine) -> None:
    broker = start_broker()
    limit = broker.settings.max_packet_bytes
    credentials = enroll("d1")
    at_limit = publish(TOPIC, b"x" * (limit - len(publish(TOPIC, b"", qos=1)) - 2), qos=1)
    assert len(at_limit) == limit
    one_above = publish(TOPIC, b"x" * (limit - len(publish(TOPIC, b"", qos=1)) - 1), qos=1)
    assert len(one_above) == limit + 1
    attacks = [one_above[:65536],  # one byte too many, its header counted
               subscribe(*["devices/d1/commands/" + "x" * 60000] * 5)[:65536]]
    attacks += [header_of(0x30 | qos << 1, EIGHT_MIB) + b"\x00" * 65536 for qos in (0, 1, 2)]
    for attack in attacks:
        with raw_client(broker.port, credentials) as sock:
            sock.sendall(at_limit)
            assert read_packet(sock)[0] == 0x40  # the largest packet allowed is accepted
            with suppress(OSError):  # only the start: the broker must not wait for the rest
                sock.sendall(attack)
            assert closed_within(sock, 2) is not None
    assert wait_until(lambda: len(quota_events(sqlite_engine, "max_packet_bytes"))
                      == len(attacks))
