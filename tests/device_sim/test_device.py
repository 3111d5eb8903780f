"""How a device reads a failed connection, and what it sends."""

from __future__ import annotations

import json
import ssl

import pytest

from device_sim.device import Outcome, classify, payload
from device_sim.mqtt_loop import Closed, ClosedBeforeConnack, ConnectRefused


def alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason
    return error


def test_refusing_connack_is_a_refusal() -> None:
    attempt = classify(ConnectRefused("Not authorized"))
    assert attempt.outcome is Outcome.REFUSED
    assert attempt.detail == "CONNACK Not authorized"


@pytest.mark.parametrize("reason", ["TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                                    "TLSV13_ALERT_CERTIFICATE_REQUIRED"])
def test_tls_alert_is_a_refusal(reason: str) -> None:
    attempt = classify(alert(reason))
    assert attempt.outcome is Outcome.REFUSED
    assert reason in attempt.detail


def test_tls_alert_after_the_handshake_is_a_refusal() -> None:
    closed = Closed(at=1.0, reason="Unspecified error", error=alert("SSLV3_ALERT_BAD_CERTIFICATE"))
    assert classify(ClosedBeforeConnack(closed)).outcome is Outcome.REFUSED


def test_bare_close_before_connack_is_closed() -> None:
    closed = Closed(at=1.0, reason="Unspecified error")
    assert classify(ClosedBeforeConnack(closed)).outcome is Outcome.CLOSED


@pytest.mark.parametrize("error", [ConnectionRefusedError(111, "refused"), TimeoutError("slow"),
                                   ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
                                   ConnectionResetError(104, "reset")])
def test_unreachable_broker_is_retried(error: BaseException) -> None:
    assert classify(error).outcome is Outcome.UNREACHABLE


@pytest.mark.parametrize("size", [16, 64, 200, 4096])
def test_payload_is_padded_json_of_the_requested_size(size: int) -> None:
    body = payload({"id": "dev-1", "seq": 7}, size)
    decoded = json.loads(body)
    assert decoded["seq"] == 7
    assert len(body) >= size
    if size > 40:
        assert len(body) == size
