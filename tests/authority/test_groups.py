"""Groups are declared before anything names them, and deleted only when empty."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from device_sim.manufacturer import VendorCA
from fleet.authority.groups import NAMES_SHOWN, require_label_groups
from fleet.errors import (
    ConfigError,
    ConflictError,
    ForbiddenError,
    IdentityError,
    UnknownGroupError,
)
from fleet.registry import groups as groups_db
from fleet.registry.engine import write_session

from .conftest import Fleet


def declared(fleet: Fleet) -> list[str]:
    with fleet.session() as session:
        return groups_db.group_names(session=session)


def test_create_group_is_audited(fleet: Fleet) -> None:
    group = fleet.authority.create_group(name="pumps", actor="operator:ana",
                                         description="line 3 pumps")
    assert (group.name, group.description, group.created_by) == (
        "pumps", "line 3 pumps", "operator:ana")
    assert group.created_at == fleet.clock.now
    assert declared(fleet) == ["pumps", "sensors"]
    event = fleet.audit()[-1]
    assert (event.action, event.outcome, event.actor) == ("group.create", "ok", "operator:ana")
    assert json.loads(event.detail or "{}") == {"group": "pumps", "description": "line 3 pumps"}


def test_create_refused_already_declared(fleet: Fleet) -> None:
    with fleet.refused(ConflictError, "group.create", match="group sensors is already declared"):
        fleet.authority.create_group(name="sensors", actor="operator")


def test_create_refused_bad_name(fleet: Fleet) -> None:
    for name in ["", "a/b", "+", "#", "-lead", "x" * 65]:
        with fleet.refused(IdentityError, "group.create", match="invalid group"):
            fleet.authority.create_group(name=name, actor="operator")


def test_create_refused_description_too_long(fleet: Fleet) -> None:
    with fleet.refused(ConflictError, "group.create", match="at most 256 characters"):
        fleet.authority.create_group(name="pumps", actor="operator", description="x" * 257)
    fleet.authority.create_group(name="pumps", actor="operator", description="x" * 256)


def test_ensure_group_declares_once(fleet: Fleet) -> None:
    assert fleet.authority.ensure_group(name="sim", actor="operator:fleet-sim") is True
    audited = len(fleet.audit())
    assert fleet.authority.ensure_group(name="sim", actor="operator:fleet-sim") is False
    assert len(fleet.audit()) == audited  # nothing happened, nothing recorded
    assert declared(fleet) == ["sensors", "sim"]


def test_delete_empty_group(fleet: Fleet) -> None:
    fleet.authority.create_group(name="pumps", actor="operator")
    fleet.authority.delete_group(name="pumps", actor="operator:ana")
    assert declared(fleet) == ["sensors"]
    event = fleet.audit()[-1]
    assert (event.action, event.outcome, event.actor) == ("group.delete", "ok", "operator:ana")


def test_delete_refused_unknown_group_names_the_declared_ones(fleet: Fleet) -> None:
    with fleet.refused(UnknownGroupError, "group.delete",
                       match=r"^unknown group 'sensrs'; declared groups: sensors$"):
        fleet.authority.delete_group(name="sensrs", actor="operator")


def test_delete_refused_while_a_live_token_is_in_it(fleet: Fleet) -> None:
    fleet.token(group="sensors")
    with fleet.refused(ConflictError, "group.delete",
                       match=r"group sensors is not empty: 1 live token\(s\)"):
        fleet.authority.delete_group(name="sensors", actor="operator")


def test_delete_refused_while_devices_are_in_it(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    fleet.token(device_id="dev-2")  # pending, with its live token
    fleet.enroll("dev-3")
    fleet.authority.revoke_device(device_id="dev-3", reason="keyCompromise", actor="operator")
    with fleet.refused(ConflictError, "group.delete", match=(
            r"not empty: 1 active device\(s\), 1 pending device\(s\), 1 revoked device\(s\), "
            r"1 live token\(s\)")):
        fleet.authority.delete_group(name="sensors", actor="operator")


def test_delete_refused_while_a_vendor_enrolls_into_it(fleet: Fleet) -> None:
    fleet.authority.create_group(name="cameras", actor="operator")
    fleet.authority.add_vendor(name="acme", ca_pem=VendorCA("Acme").pem().encode(),
                               group="cameras", actor="operator")
    with fleet.refused(ConflictError, "group.delete", match=(
            r"^group cameras is not empty: vendor acme enrolls devices into it; remove the "
            r"vendor first \(fleet vendor remove NAME\)$")):
        fleet.authority.delete_group(name="cameras", actor="operator")
    fleet.authority.remove_vendor(name="acme", actor="operator")
    fleet.authority.delete_group(name="cameras", actor="operator")
    assert declared(fleet) == ["sensors"]


def test_delete_allowed_when_only_dead_tokens_name_it(fleet: Fleet) -> None:
    fleet.authority.create_group(name="pumps", actor="operator")
    revoked = fleet.token(group="pumps").split(".")[0]
    fleet.authority.revoke_token(token_id=revoked, actor="operator")
    fleet.token(group="pumps", ttl=timedelta(minutes=5))
    fleet.clock.advance(minutes=6)  # expired
    fleet.authority.delete_group(name="pumps", actor="operator")
    assert declared(fleet) == ["sensors"]
    assert {t.group for t in fleet.tokens()} == {"pumps"}  # the tokens stay, as history


def test_enrollment_refused_when_the_tokens_group_is_not_declared(fleet: Fleet) -> None:
    """Fail closed: a token whose group row is gone (edited out of the registry) enrolls
    nothing."""
    token = fleet.token(group="sensors")
    with fleet.authority.engine.begin() as connection:
        connection.execute(text("DELETE FROM device_groups WHERE name = 'sensors'"))
    with fleet.refused(ForbiddenError, "enroll", match="is for group 'sensors', which is not "
                                                       "declared"):
        fleet.enroll("dev-1", token)
    assert fleet.device("dev-1") is None


def test_token_create_waits_for_a_concurrent_group_delete_and_is_refused(
        fleet: Fleet) -> None:
    """Minting locks the group row: a token is never minted into a group that a concurrent
    transaction deletes (on PostgreSQL a plain read would see the row until that commit)."""
    engine = fleet.authority.engine
    outcome: list[BaseException | None] = []
    with write_session(engine) as deleting:
        deleting.connection().execute(text(
            "SELECT name FROM device_groups WHERE name = 'sensors'"
            + (" FOR UPDATE" if engine.dialect.name == "postgresql" else "")))
        deleting.connection().execute(text("DELETE FROM device_groups WHERE name = 'sensors'"))

        def mint() -> None:
            try:
                fleet.authority.create_tokens(group="sensors", actor="factory")
            except BaseException as error:  # the test's verdict, read below
                outcome.append(error)
            else:
                outcome.append(None)

        minting = threading.Thread(target=mint)
        minting.start()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not outcome:
            time.sleep(0.05)
        assert outcome == [], "token create did not wait for the group's lock"
        deleting.commit()
    minting.join(30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], UnknownGroupError), outcome
    assert fleet.tokens() == []


def test_labels_must_point_at_declared_groups(fleet: Fleet) -> None:
    engine = fleet.authority.engine
    require_label_groups(engine, {"line-1": "sensors"})
    require_label_groups(engine, {})
    with pytest.raises(ConfigError, match=r"^config est.labels=.*label 'cams' points at group "
                                          r"'cameras', which is not declared; declared "
                                          r"groups: sensors$"):
        require_label_groups(engine, {"line-1": "sensors", "cams": "cameras"})


def test_an_error_names_at_most_a_few_groups(fleet: Fleet) -> None:
    for index in range(NAMES_SHOWN + 2):
        fleet.authority.create_group(name=f"g{index:02d}", actor="operator")
    with pytest.raises(UnknownGroupError) as info:
        fleet.authority.create_tokens(group="nope", actor="factory")
    assert str(info.value).endswith(" and 3 more (fleet group list)")
    assert "g19" in str(info.value)
    assert "g20" not in str(info.value)
