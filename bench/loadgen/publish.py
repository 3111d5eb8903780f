"""Publish workers and the sink: devices publish to their own telemetry topic at an offered
rate, one service subscribed to ``devices/+/telemetry`` receives and counts.

Every client is paho-mqtt with its network loop on its own thread (loop_start). A payload is
64 bytes and starts with the publisher's CLOCK_MONOTONIC (shared by every process of the
machine), so the sink measures publish -> delivery latency as well as loss.
"""

from __future__ import annotations

import ssl
import struct
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from loadgen import HOST, Credential, client_context, serve

PAYLOAD_BYTES = 64
TICK = 0.005
QUIET = 2.0  # the sink stops once nothing arrived for this long after the publishers ended
DRAIN = 30.0  # ... or after this long at most


def _connected(port: int, chain: str, credential: Credential) -> mqtt.Client:
    context = client_context(chain, credential)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=credential[0],
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.tls_set_context(context)
    up = threading.Event()
    client.on_connect = lambda _c, _u, _f, code, _p: up.set() if not code.is_failure else None
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    if not up.wait(30):
        raise ConnectionError(f"{credential[0]}: no CONNACK")
    return client


def sink(pipe: Connection, port: int, chain: str, service: Credential, qos: int) -> None:
    latencies: list[float] = []
    lock = threading.Lock()

    def on_message(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        (sent,) = struct.unpack_from("!d", message.payload)
        with lock:
            latencies.append((time.monotonic() - sent) * 1000)

    client = _connected(port, chain, service)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe("devices/+/telemetry", qos=qos)
    if not subscribed.wait(30):
        raise ConnectionError("no SUBACK")

    def drain(expected: int) -> dict[str, Any]:
        """Wait for *expected* messages (bounded), answer what came and start counting anew."""
        deadline = time.monotonic() + DRAIN
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            with lock:
                count = len(latencies)
            if count >= expected:
                break
            if count != seen:
                seen, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since > QUIET:
                break
            time.sleep(0.05)
        with lock:
            answer = {"received": len(latencies), "latency_ms": list(latencies)}
            latencies.clear()
        return answer

    serve(pipe, drain)
    client.disconnect()
    client.loop_stop()


def publisher(pipe: Connection, port: int, chain: str, devices: list[Credential], qos: int,
              rate: float) -> None:
    """Each request (seconds): publish at *rate* messages per second in total, spread over
    *devices*, for that long; QoS 1 then waits (bounded) for the PUBACKs."""
    clients = [(_connected(port, chain, d), f"devices/{d[0]}/telemetry") for d in devices]
    pad = bytes(PAYLOAD_BYTES - 8)

    def publish(seconds: float) -> dict[str, Any]:
        started = time.monotonic()
        sent = 0
        pending: list[mqtt.MQTTMessageInfo] = []
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                client, topic = clients[sent % len(clients)]
                info = client.publish(topic, struct.pack("!d", time.monotonic()) + pad, qos=qos)
                if qos:
                    pending.append(info)
                sent += 1
            time.sleep(TICK)
        deadline = time.monotonic() + DRAIN
        for info in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError, ssl.SSLError):
                break
        acknowledged = sum(1 for info in pending if info.is_published())
        return {"sent": sent, "acknowledged": acknowledged if qos else sent,
                "seconds": time.monotonic() - started}

    serve(pipe, publish)
    for client, _ in clients:
        client.disconnect()
        client.loop_stop()
