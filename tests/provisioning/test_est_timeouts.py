"""Every read is bounded in time: handshake, request headers, body (min rate), keep-alive."""

from __future__ import annotations

import base64
import logging
import socket
import time

import pytest
from est_support import EST, Est, closed_after

from provisioning.limits import BodyLimits

FAST = {"FLEET_EST_HANDSHAKE_TIMEOUT": "500ms", "FLEET_EST_HEADER_TIMEOUT": "500ms",
        "FLEET_EST_BODY_TIMEOUT": "500ms", "FLEET_EST_BODY_MIN_RATE": "1000",
        "FLEET_EST_KEEPALIVE_TIMEOUT": "1s"}
SLACK = 1.5
"""Seconds a loaded test machine may add to a timeout."""


def _head(est: Est, length: int = 1000) -> bytes:
    auth = base64.b64encode(f":{est.token()}".encode()).decode()
    return (f"POST {EST}/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/pkcs10\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_body_min_rate_gives_each_length_its_time() -> None:
    limits = BodyLimits(max_bytes=16384, timeout=5.0, min_rate=1024)
    assert limits.seconds_for(0) == 5.0
    assert limits.seconds_for(2048) == 7.0


def test_stalled_handshake_closed_after_handshake_timeout(make_est: object) -> None:
    est: Est = make_est(**FAST)  # type: ignore[operator]
    with socket.create_connection(("127.0.0.1", est.port)) as raw:
        waited = closed_after(raw, limit=0.5 + SLACK)
    assert waited is not None
    assert waited >= 0.4


def test_connection_without_request_closed_after_header_timeout(make_est: object) -> None:
    est: Est = make_est(**FAST)  # type: ignore[operator]
    with est.tls_socket() as idle:
        waited = closed_after(idle, limit=0.5 + SLACK)
    assert waited is not None
    assert waited >= 0.4


def test_stalled_request_headers_closed_after_header_timeout(
        make_est: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="provisioning")
    est: Est = make_est(**FAST)  # type: ignore[operator]
    with est.tls_socket("127.0.0.2") as slow:
        slow.sendall(_head(est)[:40])
        waited = closed_after(slow, limit=0.5 + SLACK)
    assert waited is not None
    assert "closed the connection from 127.0.0.2: no complete request headers" in caplog.text


def test_second_request_headers_timed_from_their_first_byte(make_est: object) -> None:
    est: Est = make_est(**FAST)  # type: ignore[operator]
    with est.tls_socket() as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")  # and the rest never comes
        waited = closed_after(kept, limit=0.5 + SLACK)
    assert waited is not None
    assert waited >= 0.4


def test_idle_keepalive_connection_closed_after_keepalive_timeout(make_est: object) -> None:
    est: Est = make_est(**FAST)  # type: ignore[operator]
    with est.tls_socket() as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        waited = closed_after(kept, limit=1 + SLACK)
    assert waited is not None
    assert waited >= 0.9


def test_enroll_refused_body_slower_than_min_rate_408(
        make_est: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="provisioning")
    est: Est = make_est(**FAST)  # type: ignore[operator]
    with est.tls_socket() as slow:
        slow.sendall(_head(est, 1000) + b"MII")  # allowed: 0.5 s + 1000 B at 1000 B/s
        slow.settimeout(1.5 + SLACK)
        reply = slow.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"text/plain" in reply
        assert b"request body incomplete after 1.5s (3 of 1000 bytes)" in reply
        assert closed_after(slow, limit=0.5 + SLACK) is not None  # after draining the rest
    est.record_refusals()
    [event] = est.refusals("enroll")
    assert event.reason is not None
    assert "RequestTimeoutError" in event.reason
    lines = [r for r in caplog.records
             if r.name == "provisioning" and "request body incomplete" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO


def test_aborted_upload_logs_one_line_without_traceback(
        make_est: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    est: Est = make_est(**FAST)  # type: ignore[operator]
    with est.tls_socket() as aborted:
        aborted.sendall(_head(est, 1000) + b"MII")
    for _ in range(100):  # until the service has noticed
        if any("connection closed during the upload" in r.getMessage()
               for r in caplog.records):
            break
        time.sleep(0.05)
    lines = [r for r in caplog.records
             if r.name == "provisioning" and "during the upload" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.exc_info]
    assert est.get("/healthz").status == 200
