"""Failed tokens never lock out valid credentials: 30 bad tokens from one address (devices
behind one NAT) leave renewals and other tokens from that address working; only the same
(source, token id) pair is throttled."""

from __future__ import annotations

import pytest
from est_support import Est, make_csr

pytestmark = pytest.mark.slow

NAT = "127.0.0.2"
BUDGET = 30  # est.auth_failures_per_minute, the default


def test_bad_tokens_from_one_address_do_not_refuse_a_valid_renewal(make_est: object) -> None:
    est: Est = make_est()  # type: ignore[operator]
    device = est.device("dev-nat")
    for n in range(BUDGET + 5):
        assert est.enroll(make_csr("dev-x"), f"{n:016x}.{'B' * 32}",
                          source=NAT).status == 401
    with est.tls_socket(NAT):
        pass  # the address itself is not refused
    reply = est.reenroll(make_csr("dev-nat", device.key), device, source=NAT)
    assert reply.status == 200, reply.text


def test_bad_tokens_from_one_address_do_not_refuse_a_valid_token(make_est: object) -> None:
    est: Est = make_est()  # type: ignore[operator]
    attacked = est.token()
    wrong = attacked.split(".", 1)[0] + "." + "W" * 32
    for _ in range(BUDGET):
        assert est.enroll(make_csr("dev-x"), wrong, source=NAT).status == 401
    for n in range(BUDGET):
        est.enroll(make_csr("dev-x"), f"{n:016x}.{'B' * 32}", source=NAT)
    for bad in ("garbage", "", "no.dot.token"):
        est.enroll(make_csr("dev-x"), bad, source=NAT)
    assert est.enroll(make_csr("dev-new"), est.token(), source=NAT).status == 200


def test_only_the_same_source_and_token_id_refused_429(make_est: object) -> None:
    est: Est = make_est()  # type: ignore[operator]
    attacked = est.token()
    wrong = attacked.split(".", 1)[0] + "." + "W" * 32
    for _ in range(BUDGET):
        assert est.enroll(make_csr("dev-x"), wrong, source=NAT).status == 401
    reply = est.enroll(make_csr("dev-x"), wrong, source=NAT)
    assert reply.status == 429
    assert "too many failed authentications" in reply.text
    assert 1 <= int(reply.headers["Retry-After"]) <= 60
    # Refused before the CSR is read: even a body that is no CSR gets 429.
    assert est.enroll(b"not a CSR", wrong, source=NAT, encode=False).status == 429
    # The pair is throttled, not the address nor the token.
    assert est.enroll(make_csr("dev-z"), est.token(), source=NAT).status == 200
    assert est.enroll(make_csr("dev-y"), attacked).status == 200

