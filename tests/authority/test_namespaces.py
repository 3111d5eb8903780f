"""Device ids and service client ids are disjoint, whichever identity is created first.

Each refusal is a ConflictError naming the other identity, audited, and changes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
from pki.x509_factory import new_key

from fleet.authority import Issued
from fleet.errors import ConflictError

from .conftest import Fleet
from .test_concurrency import race


def issue_service(fleet: Fleet, name: str) -> Issued:
    return fleet.authority.issue_service_certificate(name=name, public_key=new_key().public_key(),
                                                     actor="operator")


@pytest.mark.parametrize("device_id", ["gwX", "gwX-0", "gwX_1", "gwX.sensor"])
def test_enroll_refused_device_named_after_an_existing_service(fleet: Fleet,
                                                               device_id: str) -> None:
    issue_service(fleet, "gwX")
    token = fleet.token()
    with fleet.refused(ConflictError, "enroll", match="collides with service/gwX"):
        fleet.enroll(device_id, token)
    assert fleet.device(device_id) is None
    assert fleet.tokens()[0].uses_left == 1


@pytest.mark.parametrize("name", ["gwX", "gwX-sensor", "gwX-sensor-1"])
def test_issue_service_refused_when_a_device_id_is_one_of_its_client_ids(fleet: Fleet,
                                                                       name: str) -> None:
    fleet.enroll("gwX-sensor-1")
    with fleet.refused(ConflictError, "service.issue",
                       match="collides with device/gwX-sensor-1") as info:
        issue_service(fleet, name)
    assert info.value.context["service"] == name
    refusal = fleet.audit()[-1]
    assert refusal.device_id is None  # the refused identity is the service, not the device
    assert refusal.detail is not None
    assert "device/gwX-sensor-1" in refusal.detail


def test_device_bound_token_refused_for_a_colliding_device_id(fleet: Fleet) -> None:
    issue_service(fleet, "gwX")
    with fleet.refused(ConflictError, "token.create", match="collides with service/gwX"):
        fleet.token(device_id="gwX-1")
    assert fleet.device("gwX-1") is None


def test_a_revoked_identity_keeps_its_name(fleet: Fleet) -> None:
    fleet.enroll("gwX-1")
    fleet.authority.revoke_device(device_id="gwX-1", reason="keyCompromise", actor="operator")
    with fleet.refused(ConflictError, "service.issue", match="device/gwX-1"):
        issue_service(fleet, "gwX")


def test_names_that_are_not_a_name_plus_separator_stay_usable(fleet: Fleet) -> None:
    issue_service(fleet, "gwX")
    for device_id in ["gwX2", "gw", "GWX-1", "gwXsensor", "sensor-gwX"]:
        fleet.enroll(device_id)
    fleet.token(device_id="gwX3")
    issue_service(fleet, "gwX")  # a new certificate for the same service
    issue_service(fleet, "gwX2-")
    assert all(fleet.device(d) is not None for d in ["gwX2", "gw", "GWX-1", "gwX3"])


def test_concurrent_device_and_service_creation_never_both_win(fleet: Fleet) -> None:
    pairs = 8
    tokens = [fleet.token(uses=1) for _ in range(pairs)]
    csrs = [fleet.csr(f"svc{i}-1", new_key()) for i in range(pairs)]
    calls: list[Callable[[], object]] = []
    for i in range(pairs):
        calls.append(functools.partial(fleet.enroll, f"svc{i}-1", tokens[i], csr=csrs[i]))
        calls.append(functools.partial(issue_service, fleet, f"svc{i}"))
    wins, refusals = race(calls)
    assert len(wins) == pairs, [str(r) for r in refusals]
    assert all(isinstance(r, ConflictError) for r in refusals), [str(r) for r in refusals]
    for i in range(pairs):
        device = fleet.device(f"svc{i}-1") is not None
        services = [c for c in fleet.certificates() if c.service == f"svc{i}"]
        assert device != bool(services), i
