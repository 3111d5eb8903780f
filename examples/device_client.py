"""A small Fleet device: enroll over EST, publish over MQTT with mutual TLS, renew in time.

It needs paho-mqtt and cryptography, not Fleet. What it does (docs/devices.md explains why):

1. With no identity in ``--state-dir`` it makes a P-256 key and a CSR (CN = device id) and
   enrolls with ``simpleenroll``, the bootstrap token from ``--token-file`` as the HTTP Basic
   password. The key and the certificate are kept in one file (``identity.pem``, 0600),
   replaced in one rename.
2. It connects to the broker with that certificate, client id = device id, a persistent
   session; it subscribes to its commands and publishes telemetry every ``--interval``.
3. Once ``--renewal-fraction`` of the lifetime has passed (measured from when the certificate
   arrived: Fleet backdates notBefore), it re-enrolls with ``simplereenroll`` over mutual TLS
   on a fresh key, still connected, then reconnects with the new certificate.
4. A refusal or an unreachable service is retried with exponential backoff and full jitter; a
   ``Retry-After`` (429, 503) is waited out instead. A certificate that expired cannot renew:
   the device then needs a new token and exits with status 2.

Both connections trust only ``--ca`` (the fleet's ``ca/chain.pem``, flashed at the factory),
and the server's name is checked. The token is never printed.

    python examples/device_client.py --est https://fleet.example:8443 \\
        --mqtt fleet.example:8883 --ca chain.pem --device-id sensor-0042 \\
        --token-file /factory/token --state-dir /var/lib/sensor
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import logging
import os
import random
import signal
import ssl
import sys
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("device")

EST_PATH = "/.well-known/est"
CONNACK_TIMEOUT = 30.0
MAX_RETRY_AFTER = 3600.0
"""A Retry-After longer than this is capped (a misconfigured server cannot park a device)."""


class Retry(Exception):
    """Try again in *delay* seconds (None: after the next backoff delay)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Backoff:
    """Exponential backoff with full jitter: a fleet that lost its server does not come back
    all at the same instant."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.attempt = initial, maximum, 0

    def reset(self) -> None:
        self.attempt = 0

    def delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return random.uniform(0, ceiling)


class Identity:
    """The device's key and certificate, in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = path.read_bytes()
        self.certificate = x509.load_pem_x509_certificate(data)
        self.received = path.stat().st_mtime

    @classmethod
    def save(cls, path: Path, key: ec.EllipticCurvePrivateKey,
             certificate: x509.Certificate) -> Identity:
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        pem += certificate.public_bytes(serialization.Encoding.PEM)
        fresh = path.with_suffix(".new")
        descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        fresh.replace(path)
        return cls(path)

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def expires(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp()

    def renew_at(self, fraction: float) -> float:
        return self.received + (self.expires - self.received) * fraction


class Device:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.device_id: str = options.device_id
        self.identity_path = Path(options.state_dir) / "identity.pem"
        self.identity_path.parent.mkdir(mode=0o700, exist_ok=True)
        est = urlsplit(options.est)
        if est.scheme != "https" or not est.hostname:
            raise SystemExit(f"--est must be an https:// URL, not {options.est!r}")
        self.est_host, self.est_port = est.hostname, est.port or 443
        self.est_path = est.path.rstrip("/") or EST_PATH
        host, _, port = options.mqtt.rpartition(":")
        self.mqtt_host, self.mqtt_port = host, int(port)
        self.stopping = threading.Event()
        self.backoff = Backoff(options.backoff_initial, options.backoff_max)

    # -- EST (RFC 7030) --------------------------------------------------------------------

    def _context(self, identity: Identity | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.options.ca)  # the pinned fleet CA
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if identity is not None:
            context.load_cert_chain(identity.path)
        return context

    def _est(self, operation: str, csr: bytes, *, identity: Identity | None = None,
             token: str | None = None) -> x509.Certificate:
        """POST a CSR; the issued certificate, or Retry for anything else."""
        headers = {"Content-Type": "application/pkcs10",
                   "Content-Transfer-Encoding": "base64"}
        if token is not None:
            basic = base64.b64encode(f"{self.device_id}:{token}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        connection = http.client.HTTPSConnection(self.est_host, self.est_port, timeout=30,
                                                 context=self._context(identity))
        try:
            connection.request("POST", f"{self.est_path}/{operation}",
                               body=base64.encodebytes(csr), headers=headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise Retry(f"{operation}: {error}") from None
        finally:
            connection.close()
        if response.status == 200:
            try:
                (certificate,) = pkcs7.load_der_pkcs7_certificates(
                    base64.b64decode(b"".join(body.split()), validate=True))
            except ValueError as error:  # binascii.Error is one
                raise Retry(f"{operation}: unreadable response: {error}") from None
            return certificate
        reason = body.decode("utf-8", "replace").strip()[:200]
        raise Retry(f"{operation} refused: {response.status} {reason}",
                    retry_after(response.getheader("Retry-After")))

    def _csr(self, key: ec.EllipticCurvePrivateKey) -> bytes:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.device_id)])
        request = x509.CertificateSigningRequestBuilder().subject_name(subject)
        return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def enroll(self) -> Identity:
        token = Path(self.options.token_file).read_text().strip()
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self._est("simpleenroll", self._csr(key), token=token)
        identity = Identity.save(self.identity_path, key, certificate)
        self.backoff.reset()
        log.info("enrolled: certificate %s, expires %s", identity.serial,
                 certificate.not_valid_after_utc.isoformat())
        return identity

    def renew(self, identity: Identity) -> Identity:
        if time.time() >= identity.expires:
            log.error("certificate %s expired: a new bootstrap token is needed",
                      identity.serial)
            raise SystemExit(2)
        key = ec.generate_private_key(ec.SECP256R1())  # a fresh key on every renewal
        certificate = self._est("simplereenroll", self._csr(key), identity=identity)
        renewed = Identity.save(self.identity_path, key, certificate)
        self.backoff.reset()
        log.info("renewed: certificate %s replaces %s, expires %s", renewed.serial,
                 identity.serial, certificate.not_valid_after_utc.isoformat())
        return renewed

    # -- MQTT 3.1.1 ------------------------------------------------------------------------

    def session(self, identity: Identity) -> Identity:
        """Connect with *identity*, publish until it is renewed (returns the new one) or the
        connection ends (raises Retry)."""
        connack: list[ReasonCode] = []
        lost = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id,
                             clean_session=False, protocol=mqtt.MQTTv311,
                             reconnect_on_failure=False)
        client.tls_set_context(self._context(identity))

        def connected(c: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                      code: ReasonCode, properties: object) -> None:
            connack.append(code)
            if not code.is_failure:
                c.subscribe(f"devices/{self.device_id}/commands/#", qos=1)

        client.on_connect = connected
        client.on_disconnect = lambda c, u, f, code, p: lost.set()
        client.on_message = lambda c, u, message: log.info(
            "command on %s: %r", message.topic, message.payload[:100])
        try:
            client.connect(self.mqtt_host, self.mqtt_port, keepalive=30)
        except (OSError, ssl.SSLError) as error:
            raise Retry(f"broker: {error}") from None
        client.loop_start()
        try:
            deadline = time.monotonic() + CONNACK_TIMEOUT
            while not connack and not lost.is_set() and time.monotonic() < deadline:
                lost.wait(0.05)
            if not connack:
                raise Retry("broker: no CONNACK")
            if connack[0].is_failure:
                raise Retry(f"broker refused the connection: {connack[0]}")
            log.info("connected with certificate %s", identity.serial)
            self.backoff.reset()
            return self._publish(client, identity, lost)
        finally:
            client.disconnect()
            client.loop_stop()

    def _publish(self, client: mqtt.Client, identity: Identity,
                 lost: threading.Event) -> Identity:
        topic = f"devices/{self.device_id}/telemetry"
        sequence = 0
        while not self.stopping.is_set():
            if time.time() >= identity.renew_at(self.options.renewal_fraction):
                try:
                    return self.renew(identity)  # make before break: still connected
                except Retry as retry:
                    self.wait(retry)
                    continue
            sequence += 1
            payload = json.dumps({"seq": sequence, "serial": identity.serial,
                                  "at": datetime.now(UTC).isoformat()})
            client.publish(topic, payload, qos=1)
            if lost.wait(self.options.interval):
                raise Retry("connection lost")
        return identity

    # -- the loop --------------------------------------------------------------------------

    def wait(self, retry: Retry) -> None:
        if retry.delay is not None:
            delay, why = retry.delay, " (Retry-After)"
        else:
            delay, why = self.backoff.delay(), ""
        log.warning("%s; retrying in %.1fs%s", retry, delay, why)
        self.stopping.wait(delay)

    def run(self) -> None:
        identity: Identity | None = None
        if self.identity_path.exists():
            identity = Identity(self.identity_path)
        while not self.stopping.is_set():
            try:
                if identity is None:
                    identity = self.enroll()
                elif time.time() >= identity.renew_at(self.options.renewal_fraction):
                    identity = self.renew(identity)  # it was offline past its renewal point
                else:
                    identity = self.session(identity)
            except Retry as retry:
                self.wait(retry)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP-date, RFC 9110 10.2.3)."""
    if not value:
        return None
    try:
        seconds = float(value) if value.strip().isdigit() else (
            parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--est", required=True, help="EST base URL, https://HOST:PORT")
    parser.add_argument("--mqtt", required=True, help="broker HOST:PORT")
    parser.add_argument("--ca", required=True, help="the fleet CA chain to trust (only)")
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--token-file", required=True,
                        help="bootstrap token, read at first enrollment only")
    parser.add_argument("--state-dir", required=True, help="where identity.pem is kept")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between messages")
    parser.add_argument("--renewal-fraction", type=float, default=2 / 3)
    parser.add_argument("--backoff-initial", type=float, default=1.0)
    parser.add_argument("--backoff-max", type=float, default=300.0)
    parsed = parser.parse_args(argv)
    if not 0 < parsed.renewal_fraction < 1:
        parser.error("--renewal-fraction must be between 0 and 1")
    if not 0 < parsed.backoff_initial <= parsed.backoff_max:
        parser.error("--backoff-initial must be positive and at most --backoff-max")
    return parsed


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    device = Device(options(argv))

    def stop(signum: int, frame: FrameType | None) -> None:
        device.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    device.run()
    log.info("stopped")


if __name__ == "__main__":
    main()
