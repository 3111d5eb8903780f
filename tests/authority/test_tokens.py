"""Bootstrap tokens: minting (bound and unbound), limits, revocation."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta

import pytest

from fleet.authority import MAX_TOKENS_PER_CALL
from fleet.errors import (
    ConflictError,
    DeviceNotActiveError,
    IdentityError,
    NotFoundError,
    UnknownGroupError,
)
from fleet.registry import DeviceStatus

from .conftest import Fleet


def test_create_unbound_token(fleet: Fleet) -> None:
    issued = fleet.authority.create_tokens(group="sensors", actor="factory")
    assert len(issued) == 1
    token, row = issued[0].token, issued[0].row
    assert re.fullmatch(r"[0-9a-f]{16}\.[A-Za-z0-9_-]{32}", str(token))
    assert token.secret not in repr(token)
    stored = fleet.tokens()
    assert len(stored) == 1
    assert stored[0].id == token.token_id == row.id
    assert stored[0].secret_hash == hashlib.sha256(token.secret.encode()).hexdigest()
    assert (stored[0].group, stored[0].device_id) == ("sensors", None)
    assert (stored[0].uses_left, stored[0].max_uses) == (1, 1)
    assert stored[0].expires_at == fleet.clock.now + timedelta(hours=24)
    assert stored[0].created_by == "factory"
    assert stored[0].revoked_at is None
    assert fleet.device("sensors") is None
    declared, event = fleet.audit()
    assert declared.action == "group.create"
    assert (event.action, event.outcome, event.actor) == ("token.create", "ok", "factory")
    assert event.detail is not None
    detail = json.loads(event.detail)
    assert detail["ids"] == [token.token_id]
    assert detail["group"] == "sensors"
    assert token.secret not in event.detail


def test_create_many_tokens_with_uses_and_ttl(fleet: Fleet) -> None:
    issued = fleet.authority.create_tokens(group="sensors", actor="factory", count=25, uses=3,
                                           ttl=timedelta(minutes=10))
    assert len({t.token.token_id for t in issued}) == 25
    assert len({t.token.secret for t in issued}) == 25
    stored = fleet.tokens()
    assert len(stored) == 25
    assert {(t.uses_left, t.max_uses) for t in stored} == {(3, 3)}
    assert {t.expires_at for t in stored} == {fleet.clock.now + timedelta(minutes=10)}


def test_bound_token_pre_registers_the_device_as_pending(fleet: Fleet) -> None:
    fleet.token(group="sensors", device_id="dev-1")
    device = fleet.device("dev-1")
    assert device is not None
    assert (device.group, device.status) == ("sensors", DeviceStatus.PENDING)
    assert fleet.tokens()[0].device_id == "dev-1"
    assert fleet.audit()[-1].device_id == "dev-1"


def test_second_bound_token_for_an_existing_device(fleet: Fleet) -> None:
    fleet.enroll("dev-1", fleet.token(device_id="dev-1"))
    fleet.token(device_id="dev-1")
    device = fleet.device("dev-1")
    assert device is not None
    assert device.status == DeviceStatus.ACTIVE  # unchanged by minting a token
    assert len(fleet.tokens()) == 2


def test_create_refused_undeclared_group_names_the_declared_ones(fleet: Fleet) -> None:
    fleet.authority.create_group(name="cameras", actor="operator")
    with fleet.refused(UnknownGroupError, "token.create",
                       match=r"^unknown group 'sensrs'; declared groups: cameras, sensors$"):
        fleet.authority.create_tokens(group="sensrs", actor="factory")
    assert fleet.tokens() == []


def test_create_refused_undeclared_group_for_a_bound_token_registers_nothing(
        fleet: Fleet) -> None:
    with fleet.refused(UnknownGroupError, "token.create", match="unknown group 'pumps'"):
        fleet.authority.create_tokens(group="pumps", device_id="dev-1", actor="factory")
    assert fleet.device("dev-1") is None


def test_create_refused_when_no_group_is_declared(fleet: Fleet) -> None:
    fleet.authority.delete_group(name="sensors", actor="operator")
    with fleet.refused(UnknownGroupError, "token.create",
                       match="no group is declared yet: fleet group create NAME"):
        fleet.authority.create_tokens(group="sensors", actor="factory")


# Input checks do not depend on the registry's state: one test (subtests) per failure mode.

def test_create_refused_bad_group(fleet: Fleet, subtests: pytest.Subtests) -> None:
    for group in ["", "bad group", "a/b", "+", "#", "-lead", "x" * 65, "nul\x00"]:
        with subtests.test(group=group), \
                fleet.refused(IdentityError, "token.create", match="invalid group"):
            fleet.authority.create_tokens(group=group, actor="factory")


def test_create_refused_bad_device_id(fleet: Fleet, subtests: pytest.Subtests) -> None:
    for device_id in ["", "bad id", "a/b", "dev+", "x" * 65, "nul\x00"]:
        with subtests.test(device_id=device_id), \
                fleet.refused(IdentityError, "token.create", match="invalid device id"):
            fleet.authority.create_tokens(group="sensors", device_id=device_id, actor="factory")


def test_create_refused_uses_below_one(fleet: Fleet, subtests: pytest.Subtests) -> None:
    for uses in [0, -1]:
        with subtests.test(uses=uses), \
                fleet.refused(ConflictError, "token.create", match="uses must be at least 1"):
            fleet.authority.create_tokens(group="sensors", uses=uses, actor="factory")


def test_create_refused_count_out_of_bounds(fleet: Fleet, subtests: pytest.Subtests) -> None:
    for count in [0, -3, MAX_TOKENS_PER_CALL + 1]:
        with subtests.test(count=count), \
                fleet.refused(ConflictError, "token.create", match="count must be"):
            fleet.authority.create_tokens(group="sensors", count=count, actor="factory")


def test_create_refused_non_positive_ttl(fleet: Fleet, subtests: pytest.Subtests) -> None:
    for ttl in [timedelta(0), timedelta(seconds=-1)]:
        with subtests.test(ttl=ttl), \
                fleet.refused(ConflictError, "token.create", match="ttl must be positive"):
            fleet.authority.create_tokens(group="sensors", ttl=ttl, actor="factory")


def test_create_refused_several_tokens_bound_to_one_device(fleet: Fleet) -> None:
    with fleet.refused(ConflictError, "token.create", match="one at a time"):
        fleet.authority.create_tokens(group="sensors", device_id="dev-1", count=2,
                                      actor="factory")


def test_create_refused_bound_token_for_a_device_in_another_group(fleet: Fleet) -> None:
    fleet.token(group="sensors", device_id="dev-1")
    fleet.authority.create_group(name="cameras", actor="operator")
    with fleet.refused(ConflictError, "token.create", match="in group 'sensors'"):
        fleet.authority.create_tokens(group="cameras", device_id="dev-1", actor="factory")


def test_create_refused_bound_token_for_a_revoked_device(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="ops")
    with fleet.refused(DeviceNotActiveError, "token.create", match="revoked"):
        fleet.token(device_id="dev-1")


def test_revoke_token(fleet: Fleet) -> None:
    token_id = fleet.token().split(".")[0]
    fleet.clock.advance(minutes=1)
    row = fleet.authority.revoke_token(token_id=token_id, actor="ops")
    assert row.revoked_at == fleet.clock.now
    assert fleet.tokens()[0].revoked_at == fleet.clock.now
    event = fleet.audit()[-1]
    assert (event.action, event.outcome, event.actor) == ("token.revoke", "ok", "ops")


def test_revoke_token_refused_unknown(fleet: Fleet) -> None:
    with fleet.refused(NotFoundError, "token.revoke", match="unknown token"):
        fleet.authority.revoke_token(token_id="0000000000000000", actor="ops")


def test_revoke_token_refused_twice(fleet: Fleet) -> None:
    token_id = fleet.token().split(".")[0]
    fleet.authority.revoke_token(token_id=token_id, actor="ops")
    with fleet.refused(ConflictError, "token.revoke", match="already revoked"):
        fleet.authority.revoke_token(token_id=token_id, actor="ops")
