"""A real TLS handshake and MQTT CONNECT against a running broker, as a device would make it."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

# paho reports MQTT 3.1.1 return codes as MQTT 5 reason codes.
_CONNACK_OF_REASON = {0: 0x00, 132: 0x01, 133: 0x02, 136: 0x03, 134: 0x04, 135: 0x05}


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server answered: a CONNACK return code, or why there was none."""

    stage: str  # tls | connect
    connack: int | None
    detail: str


def connect(*, host: str, port: int, cert: Path, key: Path, ca: Path, client_id: str,
            timeout: float) -> Answer:
    """Handshake with *cert*/*key*, verify the server against *ca*, send CONNECT, read CONNACK."""
    answered = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode,
                   _p: object) -> None:
        result["connack"] = _CONNACK_OF_REASON.get(reason.value, reason.value)
        answered.set()

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode,
                      _p: object) -> None:
        result.setdefault("closed", str(reason))
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key),
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)
    try:
        client.connect(host, port, keepalive=30)
    except ssl.SSLError as error:
        return Answer("tls", None, f"TLS handshake failed: {error.reason or error}")
    except (OSError, TimeoutError) as error:
        return Answer("tls", None, f"cannot connect to {host}:{port}: {_why(error)}")
    deadline = time.monotonic() + timeout
    try:
        while not answered.is_set() and time.monotonic() < deadline:
            code = client.loop(timeout=0.1)
            if code not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                result.setdefault("closed", mqtt.error_string(code))
                break
    except ssl.SSLError as error:  # TLS 1.3: a refused client certificate shows up here
        return Answer("tls", None, f"the server refused the TLS session: {error.reason or error}")
    finally:
        client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()
    if "connack" in result:
        return Answer("connect", result["connack"], "CONNACK received")
    if "closed" in result:
        return Answer("tls", None, "the server closed the connection without a CONNACK "
                                   f"({result['closed']}); a TLS 1.3 server that refuses the "
                                   "client certificate does this")
    return Answer("connect", None, f"no CONNACK within {timeout:g}s")


def _why(error: BaseException) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    return getattr(error, "strerror", None) or str(error)
