"""Limits: failed-authentication rate per source (429), load bound and registry outage (503)."""

from __future__ import annotations

import base64
import socket
import ssl

from est_support import EST, Est, baseline, expect_refusal, make_csr

BAD_TOKEN = "0123456789abcdef." + "X" * 32


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_enroll_refused_rate_limited_after_failed_authentications_429(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="3")  # type: ignore[operator]
    for _ in range(3):
        assert est.enroll(make_csr("dev-x"), BAD_TOKEN).status == 401
    token = est.token()
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x"), token)
    event = expect_refusal(est, reply, 429, before, says="too many failed authentications")
    assert 1 <= int(reply.headers["Retry-After"]) <= 60
    assert event.reason is not None
    assert "RateLimitedError" in event.reason
    # Another source is not affected, and the token was not spent by the refusal.
    assert est.enroll(make_csr("dev-x"), token, source="127.0.0.2").status == 200


def test_reenroll_refused_rate_limited_source_429(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="2")  # type: ignore[operator]
    device = est.device("dev-rl")
    for _ in range(2):
        assert est.enroll(make_csr("dev-x"), BAD_TOKEN).status == 401
    before = baseline(est, "reenroll")
    reply = est.reenroll(make_csr("dev-rl", device.key), device)
    expect_refusal(est, reply, 429, before)


def test_missing_credentials_do_not_count_as_failed_authentications(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="2")  # type: ignore[operator]
    for _ in range(4):  # the RFC 7030 challenge round trip must not lock a client out
        assert est.enroll(make_csr("dev-c"), None).status == 401
    assert est.enroll(make_csr("dev-c"), est.token()).status == 200


def test_refused_over_the_concurrency_bound_503(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_CONCURRENT_REQUESTS="1")  # type: ignore[operator]
    context = ssl.create_default_context(cafile=str(est.ca_file))
    auth = base64.b64encode(f":{est.token()}".encode()).decode()
    with socket.create_connection(("127.0.0.1", est.port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as slow:
        # A request whose body is still arriving occupies the only slot.
        slow.sendall((f"POST {EST}/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
                      f"Content-Type: application/pkcs10\r\nAuthorization: Basic {auth}\r\n"
                      "Content-Length: 500\r\n\r\nMII").encode())
        for _ in range(50):  # until the server has parsed the held request's head
            reply = est.get(f"{EST}/cacerts")
            if reply.status == 503:
                break
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
        assert reply.headers["Content-Type"].startswith("text/plain")
        assert "busy" in reply.text
    assert est.get(f"{EST}/cacerts").status == 200


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
