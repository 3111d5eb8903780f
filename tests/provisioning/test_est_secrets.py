"""Token secrets never reach a log line, the audit log, or the process output."""

from __future__ import annotations

import base64
import logging

import pytest
from est_support import EST, Est, make_csr

from fleet import pki


def test_token_secret_never_logged_or_audited(make_est: object, caplog: pytest.LogCaptureFixture,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, including aiohttp.access and SQLAlchemy
    est: Est = make_est(FLEET_EST_LABELS="line-1=cameras",  # type: ignore[operator]
                        FLEET_EST_AUTH_FAILURES_PER_MINUTE="6", FLEET_EST_MAX_BODY_BYTES="1024")
    tokens = [est.token() for _ in range(3)]
    used, bearer, spare = tokens
    secrets = [t.split(".", 1)[1] for t in tokens]

    assert est.enroll(make_csr("dev-ok"), used, username="dev-ok").status == 200
    assert est.enroll(make_csr("dev-bearer"), bearer, bearer=True).status == 200
    assert est.enroll(make_csr("dev-again"), used).status == 401  # used
    assert est.enroll(make_csr("dev-x"), spare, username="dev-y").status == 400  # mismatch
    assert est.enroll(make_csr("dev-x"), spare,  # wrong group for the label
                      path=f"{EST}/line-1/simpleenroll").status == 401
    assert est.enroll(make_csr("dev-x"), spare.split(".")[1], bearer=True).status == 401
    assert est.enroll(make_csr("dev-x"), spare, headers={"Content-Type": "text/plain"}
                      ).status == 415
    big = make_csr("dev-x", pki.generate_private_key("rsa3072"))
    assert est.enroll(big, spare).status == 413
    header = {"Content-Type": "application/pkcs10",
              "Authorization": "Basic " + base64.b64encode(spare.encode()).decode()}
    assert est.enroll(make_csr("dev-x"), None, headers=header).status == 401  # no colon
    for _ in range(6):  # failures with the same token id
        est.enroll(make_csr("dev-x"), spare + "x")
    assert est.enroll(make_csr("dev-x"), spare).status == 429

    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "simpleenroll" in logged  # the capture did see the service's logs
    audit = " ".join(f"{e.reason} {e.detail} {e.actor}" for e in est.audit())
    for secret in secrets:
        assert secret not in logged
        assert secret not in audit
