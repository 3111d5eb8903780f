"""A simulated device, behaving like firmware: enroll, connect, publish, answer, renew, recover.

Life of a well-behaved device::

    enroll (EST simpleenroll, bootstrap token or manufacturer certificate)
      -> connect (MQTT over mTLS, persistent session)
      -> subscribe devices/<id>/commands/# -> publish telemetry, answer commands
      -> at the renewal point: simplereenroll over mTLS, then reconnect with the new certificate
      -> after a drop: reconnect with exponential backoff and jitter

It records what it observes. When the operator revokes it, the simulation notes the time
(:meth:`Device.mark_revoked`); the device does not know, and simply experiences the drop, the
refused reconnect and the refused re-enrollment, which it records. Device side: it knows Fleet
only over the wire.
"""

from __future__ import annotations

import asyncio
import enum
import json
import ssl
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import MQTTErrorCode

from device_sim.backoff import Backoff, jittered
from device_sim.credentials import Credentials
from device_sim.crypto import PrivateKey, build_csr, generate_key, private_key_pem
from device_sim.environment import Environment
from device_sim.est_client import ESTError, ESTHandshakeRefused, ESTRefused, ESTUnavailable
from device_sim.manufacturer import Idevid
from device_sim.mqtt_loop import Closed, ClosedBeforeConnack, ConnectRefused, LoopClient
from device_sim.tls import TrustError, client_context

MAX_QUEUED_MESSAGES = 200
REFUSALS_BEFORE_GIVING_UP = 3
CLOSES_BEFORE_GIVING_UP = 10
REVOKED_DROP_WAIT = 10.0
"""Seconds a revoked device that is still connected waits for the broker to drop it."""
TRANSIENT_TLS_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


class Phase(enum.StrEnum):
    NEW = "new"
    ENROLLING = "enrolling"
    CONNECTING = "connecting"
    ONLINE = "online"
    RENEWING = "renewing"
    RECONNECTING = "reconnecting"
    REVOKED = "revoked"
    FAILED = "failed"
    STOPPED = "stopped"


class Outcome(enum.StrEnum):
    CONNECTED = "connected"
    REFUSED = "refused"
    """The broker said no: a refusing CONNACK, or a TLS alert about our certificate."""
    CLOSED = "closed"
    """The connection ended before any CONNACK, without a reason."""
    UNREACHABLE = "unreachable"
    """No TCP/TLS connection, a broken handshake, or no answer in time."""


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Outcome
    detail: str = ""
    session_present: bool = False

    @property
    def admitted(self) -> bool:
        return self.outcome is Outcome.CONNECTED


def classify(exc: BaseException) -> Attempt:
    """What a failed connection attempt means for the device."""
    if isinstance(exc, ConnectRefused):
        return Attempt(Outcome.REFUSED, f"CONNACK {exc.code}")
    tls = exc if isinstance(exc, ssl.SSLError) else None
    if isinstance(exc, ClosedBeforeConnack) and isinstance(exc.closed.error, ssl.SSLError):
        tls = exc.closed.error
    if tls is not None and not isinstance(tls, TRANSIENT_TLS_ERRORS):
        return Attempt(Outcome.REFUSED, f"TLS: {tls.reason or tls}")
    if isinstance(exc, ClosedBeforeConnack):
        # With TLS 1.3 a refused client certificate often looks exactly like this.
        return Attempt(Outcome.CLOSED, f"{exc} (a refused certificate looks like this)")
    return Attempt(Outcome.UNREACHABLE, f"{type(exc).__name__}: {exc}")


def payload(body: dict[str, Any], size: int) -> bytes:
    """JSON *body* padded to *size* bytes (never cut short)."""
    raw = json.dumps(body, separators=(",", ":"))
    missing = size - len(raw) - len(',"pad":""')
    if missing > 0:
        body = {**body, "pad": "x" * missing}
        raw = json.dumps(body, separators=(",", ":"))
    return raw.encode()


class Device:
    """One simulated device and what it observed."""

    def __init__(self, device_id: str, env: Environment, *, token: str | None,
                 idevid: Idevid | None = None) -> None:
        self.id = device_id
        self.env = env
        self.token = token
        self.idevid = idevid
        s = env.scenario
        self.phase = Phase.NEW
        self.anchors: list[x509.Certificate] = []
        self.trust: ssl.SSLContext | None = None
        self.credentials: Credentials | None = None
        self.client = self.new_client(device_id)
        self.backoff = Backoff(initial=s.backoff_initial, maximum=s.backoff_max, rng=env.rng)
        self.est_backoff = Backoff(initial=s.backoff_initial, maximum=s.backoff_max, rng=env.rng)
        self.spans: list[tuple[float, float | None]] = []
        self.commands_seen: set[int] = set()
        self.revoked_at: float | None = None
        self.revocation: dict[str, Any] = {}
        self.session_epoch = -1
        self.enrolled_at: float | None = None
        self.first_online_at: float | None = None
        self.next_renewal: float | None = None
        self._pending: dict[int, str] = {}
        self._telemetry: asyncio.TimerHandle | None = None
        self._telemetry_seq = 0
        self._refusals = 0
        self._closes = 0

    # -- identity and certificates ----------------------------------------------------------

    async def enroll(self) -> bool:
        """Trust the pinned CA, generate a key and enroll with the bootstrap token or, when
        the device has one, with its manufacturer certificate in the TLS handshake."""
        env = self.env
        self.phase = Phase.ENROLLING
        key = generate_key(env.scenario.key_type)
        csr = build_csr(self.id, key)
        while not env.stopping:
            try:
                async with env.enroll_slots:
                    self.anchors, self.trust = await env.trust()
                    if self.idevid is not None:
                        context = client_context(self.anchors, self.idevid.certificate,
                                                 private_key_pem(self.idevid.key))
                        started = env.now()
                        certificate = await env.est.simpleenroll(csr, context=context)
                    else:
                        started = env.now()
                        certificate = await env.est.simpleenroll(
                            csr, context=self.trust, username=self.id,
                            password=self.token or "")
            except ESTUnavailable as exc:
                env.metrics.count("enroll_retries")
                if not await env.sleep(exc.retry_after or self.est_backoff.next_delay()):
                    return False
                continue
            except (ESTError, TrustError) as exc:
                self.fail("enroll-refused", str(exc))
                return False
            t = env.now()
            self.est_backoff.reset()
            credentials = Credentials.issued(key, certificate, anchors=self.anchors,
                                             received_at=t)
            self._take(credentials)
            self.enrolled_at = t
            env.metrics.sample("enroll_latency", t, (t - started) * 1000)
            env.metrics.event("enrolled", t)
            env.certificate_received(credentials.lifetime)
            return True
        return False

    def _take(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.next_renewal = self.renewal_due()
        store = self.env.scenario.store_dir
        if store is not None:
            credentials.save(store, self.id)

    async def reenroll(self, credentials: Credentials, *,
                       rekey: bool) -> tuple[PrivateKey, x509.Certificate, float]:
        """``simplereenroll`` over TLS authenticated by *credentials* (same subject).

        With *rekey* the device asks for a certificate on a fresh key (RFC 7030 "rekey").
        Returns the key, the certificate and the request's round trip in seconds.
        """
        env = self.env
        key = generate_key(env.scenario.key_type) if rekey else credentials.key
        csr = build_csr(self.id, key)
        async with env.renew_slots:
            started = env.now()
            certificate = await env.est.simplereenroll(csr, context=credentials.context)
        return key, certificate, env.now() - started

    def renewal_due(self) -> float:
        """Run time of the next renewal: the configured fraction of the lifetime, jittered."""
        assert self.credentials is not None
        s = self.env.scenario
        fraction = min(0.95, max(0.05, jittered(s.renewal_fraction, s.renewal_jitter,
                                                self.env.rng)))
        return self.credentials.renew_at(fraction)

    # -- MQTT -------------------------------------------------------------------------------

    def new_client(self, client_id: str) -> LoopClient:
        client = LoopClient(client_id, clean_session=False)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self.env.mqtt.attach(client)
        return client

    async def attempt(self, context: ssl.SSLContext, *, client: LoopClient | None = None,
                      ) -> Attempt:
        """One connection attempt (TLS handshake, CONNECT, CONNACK) within the limits."""
        env = self.env
        target = client or self.client
        async with env.connect_slots:
            started = env.now()
            try:
                present = await env.mqtt.connect(
                    target, host=env.endpoints.mqtt_host, port=env.endpoints.mqtt_port,
                    context=context, keepalive=env.scenario.keepalive,
                    timeout=env.scenario.connect_timeout)
            except (OSError, TimeoutError, ConnectRefused, ClosedBeforeConnack) as exc:
                return classify(exc)
        t = env.now()
        if target is self.client:
            env.metrics.sample("connect_latency", t, (t - started) * 1000)
        return Attempt(Outcome.CONNECTED, session_present=present)

    async def connect(self) -> bool:
        """Connect (or reconnect) until admitted, with backoff; False if that cannot happen.

        A device kept offline past its renewal point renews over EST before trying again, so
        a long broker outage does not leave it holding an expired certificate.
        """
        env = self.env
        self.phase = Phase.CONNECTING if self.first_online_at is None else Phase.RECONNECTING
        first = True
        while not env.stopping:
            if not first:
                delay = self.backoff.next_delay()
                if self.next_renewal is not None:
                    delay = min(delay, max(0.0, self.next_renewal - env.now()))
                if not await env.sleep(delay):
                    return False
            first = False
            due = self.next_renewal is not None and env.now() >= self.next_renewal
            if due and self.revoked_at is None and not await self.renew_certificate():
                return False
            assert self.credentials is not None
            attempt = await self.attempt(self.credentials.context)
            if attempt.admitted:
                self._online(attempt.session_present)
                return True
            if self.revoked_at is not None:
                await self._revoked(reconnect=attempt)
                return False
            if not self._retry_allowed(attempt):
                self.phase = Phase.FAILED
                return False
        return False

    def _retry_allowed(self, attempt: Attempt) -> bool:
        """Count a failed attempt; a broker that keeps refusing a good device is an error."""
        env = self.env
        if env.in_restart_window(env.now()):
            env.metrics.count("connect_retries_restart")
            return True
        env.metrics.count("connect_retries")
        if attempt.outcome is Outcome.UNREACHABLE:
            return True
        self._refusals += 1 if attempt.outcome is Outcome.REFUSED else 0
        self._closes += 1 if attempt.outcome is Outcome.CLOSED else 0
        if self._refusals < REFUSALS_BEFORE_GIVING_UP and self._closes < CLOSES_BEFORE_GIVING_UP:
            return True
        self.fail("connect-refused", f"{self._refusals + self._closes} times in a row, last: "
                  f"{attempt.detail}")
        return False

    def _online(self, session_present: bool) -> None:
        env = self.env
        t = env.now()
        self.phase = Phase.ONLINE
        self.backoff.reset()
        self._refusals = 0
        self._closes = 0
        self.spans.append((t, None))
        env.online.add(self.id)
        closed = self.client.closed
        assert closed is not None
        closed.add_done_callback(self._connection_ended)
        env.metrics.event("connects", t)
        if self.first_online_at is None:
            self.first_online_at = t
            env.metrics.event("connected", t)
            self._schedule_telemetry(first=True)
        if session_present and self.session_epoch == env.restart_count:
            return
        if self.session_epoch == env.restart_count:
            # The broker forgot a session it should have kept (no restart since).
            self.fail("session-lost", "CONNACK without session present after a reconnect",
                      give_up=False)
        self.client.subscribe(f"devices/{self.id}/commands/#", qos=1)

    def _connection_ended(self, closed: asyncio.Future[Closed]) -> None:
        if not closed.cancelled():
            self._offline(closed.result().at - self.env.started)

    def _offline(self, t: float) -> None:
        if self.spans and self.spans[-1][1] is None:
            self.spans[-1] = (self.spans[-1][0], t)
        self.env.online.discard(self.id)

    # -- the device's life ------------------------------------------------------------------

    async def run(self) -> None:
        """From the factory floor to the end of the run."""
        env = self.env
        try:
            if not await self.enroll() or not await self.connect():
                return
            await self._live()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a defect in the simulation itself: report, never hide
            self.fail("simulator-error", f"{type(exc).__name__}: {exc}")
        finally:
            if self.phase not in (Phase.REVOKED, Phase.FAILED):
                self.phase = Phase.STOPPED
            self._stop_telemetry()
            self._offline(env.now())

    async def _live(self) -> None:
        env = self.env
        while not env.stopping:
            closed = self.client.closed
            assert closed is not None
            assert self.next_renewal is not None
            wait = max(0.0, self.next_renewal - env.now())
            await asyncio.wait((closed, env.stop), timeout=wait,
                               return_when=asyncio.FIRST_COMPLETED)
            if env.stopping:
                return
            if closed.done():
                if not await self._dropped(closed.result()):
                    return
                continue
            if not await self.renew_certificate() or not await self._switch_connection():
                return

    async def _dropped(self, closed: Closed) -> bool:
        """The broker connection ended without us asking: find out why, then come back."""
        env = self.env
        t = closed.at - env.started
        if self.revoked_at is not None:
            self._revocation_drop(t)
            await self._revoked()
            return False
        if env.in_restart_window(t):
            env.metrics.count("drops_broker_restart")
        elif self.credentials is not None and t >= self.credentials.expires_at - 1:
            self.fail("certificate-expired", "dropped by the broker when the certificate "
                      "expired before it could be renewed", give_up=False)
        else:
            self.fail("unexpected-disconnect", f"{closed.reason} {closed.error or ''}".strip(),
                      give_up=False)
        return await self.connect()

    async def renew_certificate(self) -> bool:
        """Re-enroll over mTLS (retrying while the EST service is unavailable)."""
        env = self.env
        current = self.credentials
        assert current is not None
        phase, self.phase = self.phase, Phase.RENEWING
        last: ESTError | None = None
        while not env.stopping:
            try:
                key, certificate, took = await self.reenroll(current, rekey=env.scenario.rekey)
                break
            except ESTUnavailable as exc:
                env.metrics.count("renewal_retries")
                last = exc
                if env.now() > current.expires_at:
                    env.metrics.count("renewals_failed")
                    self.fail("renewal-failed", f"certificate expired while retrying: {exc}")
                    return False
                if not await env.sleep(exc.retry_after or self.est_backoff.next_delay()):
                    return False
            except ESTError as exc:
                if self.revoked_at is not None:
                    await self._revoked(reenroll=exc)
                    return False
                if isinstance(exc, ESTHandshakeRefused) and env.now() < current.expires_at:
                    # A connection closed without an answer is also what an overloaded server
                    # looks like: try again while the certificate is still valid.
                    env.metrics.count("renewal_retries")
                    last = exc
                    if not await env.sleep(self.est_backoff.next_delay()):
                        return False
                    continue
                env.metrics.count("renewals_failed")
                self.fail("renewal-failed", f"{exc}" + (f" (earlier: {last})" if last else ""))
                return False
        else:
            return False
        t = env.now()
        self.est_backoff.reset()
        env.metrics.sample("renewal_latency", t, took * 1000)
        env.metrics.event("renewals_ok", t)
        self._take(Credentials.issued(key, certificate, anchors=self.anchors, received_at=t))
        self.phase = phase
        return True

    async def _switch_connection(self) -> bool:
        """Close the session cleanly and reconnect with the new certificate."""
        env = self.env
        closed = self.client.closed
        if closed is not None and not closed.done():
            self.client.close_gracefully()
            done, _ = await asyncio.wait((closed,), timeout=env.scenario.connect_timeout)
            if not done:
                self.client.abort()
        if closed is not None and not closed.result().requested:
            return await self._dropped(closed.result())  # the broker dropped it meanwhile
        started = env.now()
        if not await self.connect():
            return False
        env.metrics.sample("renewal_reconnect", env.now(), (env.now() - started) * 1000)
        return True

    # -- revocation -------------------------------------------------------------------------

    def mark_revoked(self, t: float) -> None:
        """The operator revokes this device at run time *t* (the device itself cannot tell)."""
        self.revoked_at = t

    def _revocation_drop(self, t: float) -> None:
        assert self.revoked_at is not None
        if "drop_ms" not in self.revocation:
            self.revocation["drop_ms"] = round((t - self.revoked_at) * 1000, 1)
            self.env.metrics.sample("revocation_latency", t, (t - self.revoked_at) * 1000)

    async def _revoked(self, *, reconnect: Attempt | None = None,
                       reenroll: BaseException | None = None) -> None:
        """After the revocation: the broker drops the device, and a reconnect and a
        re-enrollment are both refused."""
        env = self.env
        self.phase = Phase.REVOKED
        self._stop_telemetry()
        closed = self.client.closed
        if closed is not None and "drop_ms" not in self.revocation:
            # Found out another way (a refused renewal): the broker must still drop it.
            if self.client.is_open:
                await asyncio.wait((closed,), timeout=REVOKED_DROP_WAIT)
            if closed.done() and not closed.result().requested:
                self._revocation_drop(closed.result().at - env.started)
            elif not closed.done():
                self.revocation["still_connected_after_s"] = REVOKED_DROP_WAIT
                self.client.abort()
        if reconnect is None and self.credentials is not None:
            reconnect = await self.attempt(self.credentials.context)
        if reconnect is not None:
            self.revocation["reconnect"] = reconnect.outcome.value
            if reconnect.admitted:
                env.metrics.error(env.now(), "revoked-device-admitted", self.id,
                                  "a revoked device was admitted by the broker")
                self.client.abort()
            else:
                env.metrics.count("revoked_reconnect_refused")
        if reenroll is None and self.credentials is not None:
            try:
                await self.reenroll(self.credentials, rekey=True)
            except (ESTRefused, ESTHandshakeRefused) as exc:
                reenroll = exc
            except ESTError as exc:
                self.revocation["reenroll"] = f"error: {exc}"
                return
            else:
                self.revocation["reenroll"] = "issued"
                env.metrics.error(env.now(), "revoked-device-reenrolled", self.id,
                                  "a revoked device obtained a new certificate")
                return
        self.revocation["reenroll"] = "refused"
        self.revocation["reenroll_detail"] = str(reenroll)[:200]
        env.metrics.count("revoked_reenroll_refused")

    # -- telemetry and commands -------------------------------------------------------------

    def _schedule_telemetry(self, *, first: bool = False) -> None:
        interval = self.env.scenario.telemetry_interval
        delay = self.env.rng.uniform(0, interval) if first else jittered(interval, 0.05,
                                                                          self.env.rng)
        self._telemetry = self.env.mqtt.loop.call_later(delay, self._publish_telemetry)

    def _stop_telemetry(self) -> None:
        if self._telemetry is not None:
            self._telemetry.cancel()
            self._telemetry = None

    def _publish_telemetry(self) -> None:
        env = self.env
        if env.stopping or env.draining or self.phase in (Phase.REVOKED, Phase.FAILED):
            self._telemetry = None
            return
        s = env.scenario
        self._telemetry_seq += 1
        body = payload({"id": self.id, "seq": self._telemetry_seq}, s.payload_size)
        self.publish(f"devices/{self.id}/telemetry", body, qos=s.telemetry_qos,
                     kind="telemetry")
        self._schedule_telemetry()

    def publish(self, topic: str, body: bytes, *, qos: int, kind: str,
                client: LoopClient | None = None) -> None:
        """Publish; the message counts as sent when the broker acknowledges it."""
        info = (client or self.client).publish(topic, body, qos=qos)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.env.metrics.count(f"{kind}_dropped_queue_full")
            return
        if qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        self._pending[info.mid] = kind

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any,
                    _properties: Any) -> None:
        kind = self._pending.pop(mid, None)
        if kind is not None:
            self.env.metrics.event(f"{kind}_sent", self.env.now())

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      reasons: list[Any], _properties: Any) -> None:
        if any(reason.is_failure for reason in reasons):
            self.fail("subscribe-refused", f"devices/{self.id}/commands/#: {reasons}",
                      give_up=False)
            return
        self.session_epoch = self.env.restart_count
        if self.env.on_session_ready is not None:
            self.env.on_session_ready(self.id)

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        env = self.env
        try:
            body = json.loads(message.payload)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if "spoofed_by" in body:
            env.sighting(str(body["spoofed_by"]), f"{message.topic} delivered to {self.id}")
            return
        seq = body.get("seq")
        if not message.topic.startswith(f"devices/{self.id}/commands/") or \
                not isinstance(seq, int):
            self.fail("unexpected-message", f"{message.topic}", give_up=False)
            return
        t = env.now()
        if seq in self.commands_seen:
            env.metrics.count("commands_duplicate")
            return
        self.commands_seen.add(seq)
        env.metrics.event("commands_received", t)
        if self.phase is Phase.ONLINE:
            reply = payload({"id": self.id, "seq": seq, "ok": True}, 32)
            self.publish(f"devices/{self.id}/events/reply", reply, qos=1, kind="replies")

    # -- bookkeeping ------------------------------------------------------------------------

    def fail(self, kind: str, detail: str, *, give_up: bool = True) -> None:
        """An unexpected error; with *give_up* the device stops."""
        self.env.metrics.error(self.env.now(), kind, self.id, detail)
        if give_up:
            self.phase = Phase.FAILED

    async def close(self) -> None:
        """At the end of the run: DISCONNECT (the session stays at the broker)."""
        self._stop_telemetry()
        await self.env.mqtt.close(self.client)
