"""S5: keep-alive is enforced: silence for 1.5 x keep-alive drops the client.

Stock amqtt let an idle client with keepalive=1 stay connected forever.
"""

from __future__ import annotations

import time

from .conftest import Enroll
from .helpers import BrokerThread, closed_within, connect_packet, read_connack, tls_socket

PINGREQ, PINGRESP = bytes((0xC0, 0x00)), bytes((0xD0, 0x00))


def test_s5_silent_client_dropped_after_one_and_a_half_keepalive(
        enroll: Enroll, broker: BrokerThread) -> None:
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(connect_packet("d1", keep_alive=1))
        assert read_connack(sock) == 0
        elapsed = closed_within(sock, 5)
    assert elapsed is not None
    assert 1.3 <= elapsed <= 3.0


def test_s5_pinging_client_stays_connected(enroll: Enroll, broker: BrokerThread) -> None:
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(connect_packet("d1", keep_alive=1))
        assert read_connack(sock) == 0
        for _ in range(4):
            time.sleep(0.5)
            sock.sendall(PINGREQ)
            assert sock.recv(2) == PINGRESP
