"""The EST ceiling: Fleet's enrollment without its registry, in one process.

The same steps the token path takes once the token is checked, minus the database: read and
check the CSR (signature, key policy, the identity it asks for), sign the device certificate
with the issuing CA and wrap it in PKCS#7 certs-only. Keys and CSRs are made before the clock
starts. Run as a worker process (bench/loadgen), so that its CPU is its own; each request
runs the same CSRs again.
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection

from loadgen import serve
from loadgen.est import fresh_csr

from fleet import pki
from fleet.authority import Authority
from fleet.pki import Identity
from fleet.registry import make_engine, utcnow
from fleet.settings import load_settings


def worker(pipe: Connection, env: dict[str, str], count: int) -> None:
    os.environ.update(env)
    settings = load_settings()
    authority = Authority(settings=settings, engine=make_engine(settings.effective_database_url))
    csrs = [fresh_csr(f"ceiling-{i}")[1] for i in range(count)]
    authority.ca  # noqa: B018 - the CA is read (and its key decrypted) before the clock

    def enrollments(_request: object) -> tuple[int, float, float]:
        wall, cpu = time.monotonic(), time.process_time()
        for der in csrs:
            request = pki.inspect_csr(pki.load_csr(der))
            identity = Identity("device", pki.check_device_id(request.common_name or ""))
            pki.check_requested_identity(request, identity, settings.trust_domain)
            cert = authority._sign(identity, request.csr.public_key(),
                                   settings.device_lifetime, utcnow())
            pki.certs_only([cert])
        return count, time.monotonic() - wall, time.process_time() - cpu

    serve(pipe, enrollments)
