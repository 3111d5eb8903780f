"""EST worker: enrollments, each on a new TLS connection with a fresh P-256 key and CSR.

"token": simpleenroll with a bootstrap token (HTTP Basic: device id, token), one new device
per request. "reenroll": simplereenroll over mutual TLS with the device's current certificate,
a new key each time (rekey); the certificate returned is the one the device uses next. Threads
inside the worker process keep several requests in flight (blocking sockets, no asyncio); the
key and CSR are made before the clock starts for that request, so the latency is the server's.
The CSR and PKCS#7 handling is ``cryptography``'s own, not Fleet's.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from loadgen import HOST, client_context, serve

TIMEOUT = 30.0


def fresh_csr(device_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return key, csr


def request(path: str, csr: bytes, authorization: str | None = None) -> bytes:
    body = base64.encodebytes(csr).replace(b"\n", b"\r\n")
    head = [f"POST /.well-known/est/{path} HTTP/1.1", "Host: localhost",
            "Content-Type: application/pkcs10", f"Content-Length: {len(body)}",
            "Connection: close"]
    if authorization:
        head.append(f"Authorization: {authorization}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def exchange(context: ssl.SSLContext, port: int, data: bytes) -> tuple[str, bytes]:
    """(HTTP status, body) of one request on a new connection."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(data)
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    return reply[9:12].decode(errors="replace"), reply.partition(b"\r\n\r\n")[2]


def worker(pipe: Connection, chain: str, threads: int, spool: str) -> None:
    """Each request: (port, kind, jobs, seconds). *jobs*: (device id, token) for "token";
    (device id, key PEM, certificate PEM) for "reenroll", dealt to the threads so that one
    device is only ever renewed by one."""
    serve(pipe, lambda request: _enrollments(chain, threads, Path(spool), *request))


def _enrollments(chain: str, threads: int, directory: Path, port: int, kind: str,
                 jobs: list[tuple[str, ...]], seconds: float) -> dict[str, Any]:
    server_auth = client_context(chain)
    lock = threading.Lock()
    tokens = iter(jobs)
    turns = [jobs[i::threads] for i in range(threads)]
    counts: Counter[str] = Counter()
    latencies: list[float] = []

    def enroll(_index: int, _turn: int) -> tuple[str, float]:
        with lock:
            device_id, token = next(tokens)
        _, csr = fresh_csr(device_id)
        basic = base64.b64encode(f"{device_id}:{token}".encode()).decode()
        data = request("simpleenroll", csr, f"Basic {basic}")
        begun = time.perf_counter()
        status, _ = exchange(server_auth, port, data)
        return status, time.perf_counter() - begun

    def reenroll(index: int, turn: int) -> tuple[str, float]:
        mine = turns[index]
        device_id = mine[turn % len(mine)][0]
        cert_file, key_file = directory / f"{device_id}.pem", directory / f"{device_id}.key"
        context = client_context(chain, (device_id, str(cert_file), str(key_file)))
        key, csr = fresh_csr(device_id)
        data = request("simplereenroll", csr)
        begun = time.perf_counter()
        status, body = exchange(context, port, data)
        took = time.perf_counter() - begun
        if status == "200":
            (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))
            cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        return status, took

    if kind == "reenroll":
        for device_id, key_pem, cert_pem in jobs:
            (directory / f"{device_id}.key").write_text(key_pem)
            (directory / f"{device_id}.pem").write_text(cert_pem)
    work = enroll if kind == "token" else reenroll
    deadline = time.monotonic() + seconds

    def loop(index: int) -> None:
        turn = 0
        while time.monotonic() < deadline:
            try:
                status, took = work(index, turn)
            except StopIteration:
                return
            except (OSError, ssl.SSLError) as exc:
                status, took = type(exc).__name__, 0.0
            turn += 1
            with lock:
                counts[status] += 1
                if status == "200":
                    latencies.append(took * 1000)

    started = time.monotonic()
    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {"statuses": dict(counts), "latency_ms": latencies,
            "seconds": time.monotonic() - started}
