"""A bootstrap token sent the wrong way over EST: a 401 that says the right way, and the
token's secret in no audit row, no log line and no response body."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from est_support import PKCS10, Est, EstFactory, make_csr


def _basic(userpass: str) -> str:
    return "Basic " + base64.b64encode(userpass.encode()).decode()


MISTAKES = {  # what a client sends, given the whole token
    'curl -u "$TOKEN:"': lambda token: _basic(f"{token}:"),
    'curl -u "$TOKEN:$TOKEN"': lambda token: _basic(f"{token}:{token}"),
    'curl -u "$TOKEN:dev-1"': lambda token: _basic(f"{token}:dev-1"),
    "Basic without base64": lambda token: f"Basic {token}",
    "Basic without a colon": lambda token: _basic(token),
    "Bearer with Basic's encoding": lambda token: "Bearer " + _basic(f":{token}").split()[1],
    "Bearer with the secret alone": lambda token: f"Bearer {token.partition('.')[2]}",
    "Bearer without a space": lambda token: f"Bearer{token}",
    "no scheme": lambda token: token,
    "Token scheme": lambda token: f"Token {token}",
}
USERNAME_HOLDS_TOKEN = {'curl -u "$TOKEN:"', 'curl -u "$TOKEN:$TOKEN"', 'curl -u "$TOKEN:dev-1"'}


@pytest.fixture
def est(make_est: EstFactory) -> Est:
    return make_est(FLEET_EST_AUTH_FAILURES_PER_MINUTE="100")


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_token_sent_the_wrong_way_is_refused_and_its_secret_kept(
        est: Est, mistake: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = est.token()
    secret = token.partition(".")[2]
    reply = est.enroll(make_csr("dev-1"), None,
                       headers={**PKCS10, "Authorization": MISTAKES[mistake](token)})
    est.record_refusals()

    assert reply.status == 401, reply.text
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="fleet"'
    if mistake in USERNAME_HOLDS_TOKEN:
        assert "send the token as the password" in reply.text
    refusals = est.refusals("enroll")
    assert refusals, "the refusal is audited"
    for event in refusals:
        assert event.device_id is None
        assert secret not in json.dumps(event.model_dump(mode="json"))
    assert secret not in reply.text
    assert secret not in caplog.text
    assert "simpleenroll refused with 401" in caplog.text  # the capture saw the service
    # Nothing was consumed: the same token, sent the right way, enrolls.
    assert est.enroll(make_csr("dev-1"), token, username="dev-1").status == 200

