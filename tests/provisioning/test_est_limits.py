"""Limits: failed authentications per source and token id (429), load and connection caps
(503, closed at once) and registry outage (503)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time

import pytest
from est_support import EST, Est, baseline, closed_after, expect_refusal, make_csr

from provisioning.limits import FailedAuthLimiter, Occupancy, RateLimitedError, ServerBusyError

BAD_TOKEN = "0123456789abcdef." + "X" * 32


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wrong_secret(token: str) -> str:
    return token.split(".", 1)[0] + "." + "W" * 32


# -- the failed-authentication limiter ------------------------------------------------------

def test_limiter_counts_failures_per_source_and_token_id() -> None:
    now = [0.0]
    limiter = FailedAuthLimiter(2, clock=lambda: now[0])
    for _ in range(2):
        limiter.record_failure(("192.0.2.1", "aaaa"))
    with pytest.raises(RateLimitedError, match=r"token aaaa from 192\.0\.2\.1; retry in 60s"):
        limiter.check(("192.0.2.1", "aaaa"))
    limiter.check(("192.0.2.1", "bbbb"))  # another token from the same address
    limiter.check(("192.0.2.1", None))  # credentials without a token id
    limiter.check(("192.0.2.2", "aaaa"))  # the same token from another address
    now[0] = 60.0
    limiter.check(("192.0.2.1", "aaaa"))  # the failures left the window


def test_limiter_forgets_the_least_recently_failing_keys_first() -> None:
    limiter = FailedAuthLimiter(1, max_keys=2)
    for token_id in ("a", "b", "c"):
        limiter.record_failure(("192.0.2.1", token_id))
    limiter.check(("192.0.2.1", "a"))
    with pytest.raises(RateLimitedError):
        limiter.check(("192.0.2.1", "c"))


# -- 429 over real TLS ----------------------------------------------------------------------

def test_enroll_refused_rate_limited_same_source_and_token_id_429(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="3")  # type: ignore[operator]
    token = est.token()
    for _ in range(3):
        assert est.enroll(make_csr("dev-x"), _wrong_secret(token)).status == 401
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x"), token)
    event = expect_refusal(est, reply, 429, before, says="too many failed authentications")
    assert 1 <= int(reply.headers["Retry-After"]) <= 60
    assert event.reason is not None
    assert "RateLimitedError" in event.reason
    assert event.actor == "est:127.0.0.1"
    # Another source is not affected, and the token was not spent by the refusal.
    assert est.enroll(make_csr("dev-x"), token, source="127.0.0.2").status == 200


def test_enroll_with_valid_token_not_refused_after_bad_tokens_from_its_source(
        make_est: object) -> None:
    est: Est = make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="3")  # type: ignore[operator]
    for bad in (BAD_TOKEN, "not-a-token", BAD_TOKEN[:-1]):
        for _ in range(4):
            assert est.enroll(make_csr("dev-x"), bad).status in (401, 429)
    assert est.enroll(make_csr("dev-x"), BAD_TOKEN).status == 429
    assert est.enroll(make_csr("dev-ok"), est.token()).status == 200


def test_enroll_refused_rate_limited_credentials_without_token_id_429(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="2")  # type: ignore[operator]
    for _ in range(2):
        assert est.enroll(make_csr("dev-x"), "not-a-token", bearer=True).status == 401
    assert est.enroll(make_csr("dev-x"), "still-not-one", bearer=True).status == 429
    assert est.enroll(make_csr("dev-ok"), est.token(), bearer=True).status == 200


def test_reenroll_never_refused_after_failed_token_authentications(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="2")  # type: ignore[operator]
    device = est.device("dev-rl")
    for _ in range(5):
        assert est.enroll(make_csr("dev-x"), BAD_TOKEN).status in (401, 429)
    assert est.reenroll(make_csr("dev-rl", device.key), device).status == 200


def test_missing_credentials_do_not_count_as_failed_authentications(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="2")  # type: ignore[operator]
    for _ in range(4):  # the RFC 7030 challenge round trip must not lock a client out
        assert est.enroll(make_csr("dev-c"), None).status == 401
    assert est.enroll(make_csr("dev-c"), est.token()).status == 200


# -- requests and connections at once -------------------------------------------------------

def test_occupancy_bounds_the_total_and_each_source() -> None:
    held = Occupancy(total=3, per_source=2, what="requests in progress")
    held.enter("192.0.2.1")
    held.enter("192.0.2.1")
    with pytest.raises(ServerBusyError, match=r"too many requests in progress from 192\.0\.2\.1"):
        held.enter("192.0.2.1")
    held.enter("192.0.2.2")
    with pytest.raises(ServerBusyError, match="server busy: 3 requests in progress"):
        held.enter("192.0.2.3")
    held.leave("192.0.2.1")
    held.enter("192.0.2.3")


def _hold_request(est: Est, source: str | None = None) -> ssl.SSLSocket:
    """A simpleenroll whose body is still arriving: it stays in progress."""
    held = est.tls_socket(source)
    auth = base64.b64encode(f":{est.token()}".encode()).decode()
    held.sendall((f"POST {EST}/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
                  f"Content-Type: application/pkcs10\r\nAuthorization: Basic {auth}\r\n"
                  "Content-Length: 500\r\n\r\nMII").encode())
    return held


def test_refused_over_the_concurrency_bound_503(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_CONCURRENT_REQUESTS="1")  # type: ignore[operator]
    with _hold_request(est):
        for _ in range(50):  # until the server has parsed the held request's head
            reply = est.get(f"{EST}/cacerts")
            if reply.status == 503:
                break
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
        assert reply.headers["Content-Type"].startswith("text/plain")
        assert "busy" in reply.text
    assert est.get(f"{EST}/cacerts").status == 200


def test_enroll_refused_over_the_per_source_request_cap_503(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_REQUESTS_PER_SOURCE="1")  # type: ignore[operator]
    token = est.token()
    with _hold_request(est, "127.0.0.2"):
        # Probing from 127.0.0.2 could take the only slot first: give the server time to
        # parse the held request's head instead.
        time.sleep(0.5)
        before = baseline(est, "enroll")
        reply = est.enroll(make_csr("dev-x"), token, source="127.0.0.2")
        event = expect_refusal(est, reply, 503, before,
                               says="too many requests in progress from 127.0.0.2")
        assert reply.headers["Retry-After"] == "1"
        assert event.actor == "est:127.0.0.2"
        assert event.detail is not None
        assert json.loads(event.detail)["aggregated"] is True
        # Another source still gets in.
        assert est.enroll(make_csr("dev-ok"), est.token()).status == 200


def test_connection_over_the_per_source_cap_closed_at_once(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_CONNECTIONS_PER_SOURCE="2")  # type: ignore[operator]
    held = [est.tls_socket("127.0.0.2") for _ in range(2)]
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            est.tls_socket("127.0.0.2").close()  # closed before the handshake
        assert est.get("/healthz").status == 200  # from 127.0.0.1
    finally:
        for sock in held:
            sock.close()
    for _ in range(50):  # the server notices the closes, then admits the source again
        try:
            est.tls_socket("127.0.0.2").close()
            break
        except OSError:
            continue
    else:
        pytest.fail("127.0.0.2 was never admitted again")


def test_connection_over_the_total_cap_closed_at_once(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_CONNECTIONS="2")  # type: ignore[operator]
    held = [est.tls_socket(f"127.0.0.{n}") for n in (2, 3)]
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            est.tls_socket("127.0.0.4").close()
    finally:
        for sock in held:
            sock.close()


def test_idle_connection_slot_given_back_when_the_server_closes_it(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_CONNECTIONS_PER_SOURCE="1",  # type: ignore[operator]
                        FLEET_EST_HEADER_TIMEOUT="300ms")
    with est.tls_socket("127.0.0.2") as idle:
        assert closed_after(idle, limit=5) is not None
    with est.tls_socket("127.0.0.2"):
        pass


def test_refused_registry_unavailable_503_with_retry_after(make_est: object) -> None:
    working: Est = make_est()  # type: ignore[operator]
    device = working.device("dev-db")
    token = working.token()
    dead_url = f"postgresql+psycopg://fleet@127.0.0.1:{_free_port()}/fleet"
    est: Est = make_est(dead_url)  # type: ignore[operator]
    replies = {
        "simpleenroll": est.enroll(make_csr("dev-new"), token),
        "simplereenroll": est.reenroll(make_csr("dev-db", device.key), device),
        "crl": est.get("/crl"),
        "healthz": est.get("/healthz"),
    }
    for name, reply in replies.items():
        assert reply.status == 503, (name, reply.text)
        assert reply.headers["Retry-After"] == "5"
        assert reply.headers["Content-Type"].startswith("text/plain")
        assert "registry database unavailable" in reply.text
        assert "127.0.0.1" not in reply.text  # driver details stay in the server log
    # Distribution that needs no database keeps working.
    assert est.get(f"{EST}/cacerts").status == 200
