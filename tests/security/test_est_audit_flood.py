"""Audit that floods cannot drown: 1,500 unauthenticated POSTs on keep-alive connections are
recorded as a handful of aggregated events (with their count), while an enrollment with a
valid token in the same interval is recorded as its own event."""

from __future__ import annotations

import base64
import http.client
import json
import time

import pytest
from est_support import EST, Est, b64, make_csr

pytestmark = pytest.mark.slow

CONNECTIONS = 3
PER_CONNECTION = 500
INTERVAL = 1.0  # audit.refusal_interval in this test
UNAUTHENTICATED = (
    {},  # no credentials at all
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Bearer 0123456789abcdef." + "X" * 32},  # a token that does not exist
)


def _flood(est: Est, body: bytes) -> tuple[int, float]:
    """Send the unauthenticated POSTs; returns how many were refused and the seconds taken."""
    refused = 0
    started = time.monotonic()
    for _ in range(CONNECTIONS):
        connection = http.client.HTTPSConnection("localhost", est.port, context=est.context(),
                                                 timeout=30)
        try:
            for n in range(PER_CONNECTION):
                headers = {"Content-Type": "application/pkcs10", **UNAUTHENTICATED[n % 3]}
                connection.request("POST", f"{EST}/simpleenroll", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                refused += response.status in (401, 429)
        finally:
            connection.close()
    return refused, time.monotonic() - started


def test_unauthenticated_post_flood_audited_as_a_few_aggregated_events(
        make_est: object) -> None:
    est: Est = make_est(FLEET_AUDIT_REFUSAL_INTERVAL=f"{INTERVAL:g}s")  # type: ignore[operator]
    token = est.token()
    body = b64(make_csr("dev-x"))
    refused, seconds = _flood(est, body)
    assert refused == CONNECTIONS * PER_CONNECTION
    # A device on another address enrolls in the same interval.
    assert est.enroll(make_csr("dev-ok"), token, source="127.0.0.2").status == 200

    deadline = time.monotonic() + 3 * INTERVAL + 5
    while time.monotonic() < deadline:  # the digest records every interval
        events = est.refusals("enroll")
        counted = sum(json.loads(e.detail or "{}").get("count", 1) for e in events)
        if counted >= refused:
            break
        time.sleep(0.2)
    print(f"{refused} refusals in {seconds:.1f}s recorded as {len(events)} audit events")
    assert counted == refused
    assert len(events) <= seconds / INTERVAL + 2  # one per interval and source
    for event in events:
        assert event.actor == "est:127.0.0.1"
        assert json.loads(event.detail or "{}")["aggregated"] is True
    [issued] = [e for e in est.audit("enroll") if e.outcome == "ok"]
    assert issued.device_id == "dev-ok"
