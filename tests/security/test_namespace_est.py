"""simpleenroll refuses a device id that is a client id of an existing service (409).

Found on loopback: devices named ``<service>`` and ``<service>-0``, enrolled with one group
token, held persistent sessions under the service's client ids and locked the service out.
"""

from __future__ import annotations

import pytest
from est_support import Est, baseline, expect_refusal, make_csr

from fleet import pki


@pytest.fixture
def est_with_service(make_est: object, database_url: str) -> Est:
    est: Est = make_est(database_url)  # type: ignore[operator]
    est.authority.issue_service_certificate(
        name="telemetry", public_key=pki.generate_private_key().public_key(), actor="operator")
    return est


@pytest.mark.parametrize("device_id", ["telemetry", "telemetry-0"])
def test_enroll_refused_device_id_claimed_by_a_service(est_with_service: Est,
                                                       device_id: str) -> None:
    est = est_with_service
    token = est.token(uses=2)
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr(device_id), token)
    refusal = expect_refusal(est, reply, 409, before, says="collides with service/telemetry")
    assert refusal.device_id == device_id
    assert est.enroll(make_csr("telemetry2"), token).status == 200  # not name + separator
