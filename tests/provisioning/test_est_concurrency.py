"""One-transaction semantics over real TLS: concurrent requests cannot overspend a credential."""

from __future__ import annotations

import base64
import ssl
from collections import Counter
from collections.abc import Callable

import pytest
from est_support import EST, Enrolled, Est, b64, make_csr, simultaneously
from sqlmodel import select

from fleet.registry.engine import session as new_session
from fleet.registry.models import BootstrapToken, Certificate

CLIENTS = 50
ONE_SOURCE = {"FLEET_EST_MAX_REQUESTS_PER_SOURCE": str(CLIENTS)}
"""Every client here is 127.0.0.1: let them all be in progress at once."""


def _same_request(est: Est, make: Callable[[int], tuple[str, bytes, dict[str, str],
                                                         ssl.SSLContext]]) -> Counter[int]:
    return simultaneously([(est.port, *make(i)) for i in range(CLIENTS)])


@pytest.mark.slow
def test_single_use_token_sent_by_50_simultaneous_requests_issues_once(make_est: object,
                                                                      database_url: str) -> None:
    est: Est = make_est(database_url,  # type: ignore[operator]
                        FLEET_EST_AUTH_FAILURES_PER_MINUTE="1000", **ONE_SOURCE)
    token = est.token()
    auth = "Basic " + base64.b64encode(f":{token}".encode()).decode()
    context = est.context()

    def request(i: int) -> tuple[str, bytes, dict[str, str], ssl.SSLContext]:
        return (f"{EST}/simpleenroll", b64(make_csr(f"racer-{i}")),
                {"Content-Type": "application/pkcs10", "Authorization": auth}, context)

    statuses = _same_request(est, request)
    assert statuses == Counter({200: 1, 401: CLIENTS - 1})
    with new_session(est.engine) as session:
        assert len(session.exec(select(Certificate)).all()) == 1
        assert session.exec(select(BootstrapToken)).one().uses_left == 0


@pytest.mark.slow
def test_one_certificate_renewed_by_50_simultaneous_requests_renews_once(
        make_est: object, database_url: str) -> None:
    est: Est = make_est(database_url, **ONE_SOURCE)  # type: ignore[operator]
    device: Enrolled = est.device("dev-race")
    context = est.context(device)
    body = b64(make_csr("dev-race", device.key))

    def request(_i: int) -> tuple[str, bytes, dict[str, str], ssl.SSLContext]:
        return (f"{EST}/simplereenroll", body, {"Content-Type": "application/pkcs10"}, context)

    statuses = _same_request(est, request)
    assert statuses == Counter({200: 1, 403: CLIENTS - 1})
    with new_session(est.engine) as session:
        states = Counter(str(c.status) for c in session.exec(select(Certificate)))
    assert states == Counter({"active": 1, "superseded": 1})


@pytest.mark.slow
def test_first_enrollments_of_one_device_with_many_tokens_issue_once(
        make_est: object, database_url: str) -> None:
    est: Est = make_est(database_url, **ONE_SOURCE)  # type: ignore[operator]
    clients = 20
    tokens = [est.token() for _ in range(clients)]
    context = est.context()

    def request(i: int) -> tuple[str, bytes, dict[str, str], ssl.SSLContext]:
        auth = "Basic " + base64.b64encode(f"dev-twin:{tokens[i]}".encode()).decode()
        return (f"{EST}/simpleenroll", b64(make_csr("dev-twin")),
                {"Content-Type": "application/pkcs10", "Authorization": auth}, context)

    statuses = simultaneously([(est.port, *request(i)) for i in range(clients)])
    assert statuses[200] == 1
    assert set(statuses) <= {200, 403, 409}  # already registered, or lost the race: no 500
    with new_session(est.engine) as session:
        assert len(session.exec(select(Certificate)).all()) == 1
        spent = [t.uses_left for t in session.exec(select(BootstrapToken))]
    assert sorted(spent) == [0] + [1] * (clients - 1)
    assert len(est.refusals("enroll")) == clients - 1
