"""The client-id namespace rule, and require_disjoint over both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from fleet.errors import ConflictError
from fleet.pki import Identity
from fleet.pki.identity import is_service_client_id, services_claiming
from fleet.registry import Certificate, DeviceStatus, utcnow
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db
from fleet.registry import names as names_db
from fleet.registry.engine import write_session

NAMES = ["gw", "gwX", "gwX-sensor-1", "gwX_a.b", "gwX2", "a-b-c", "x.y_z-w", "GWX-1"]


def test_services_claiming_is_exactly_the_services_whose_client_ids_include_the_device_id(
) -> None:
    for device_id in NAMES:
        claimed = {s for s in NAMES + services_claiming(device_id)
                   if is_service_client_id(s, device_id)}
        assert set(services_claiming(device_id)) == claimed, device_id


def test_service_client_ids() -> None:
    assert is_service_client_id("gwX", "gwX")
    assert all(is_service_client_id("gwX", f"gwX{sep}rest") for sep in "-_.:/@")
    assert is_service_client_id("gwX", "gwX-")
    assert not is_service_client_id("gwX", "gwX2")
    assert not is_service_client_id("gwX", "gw")
    assert not is_service_client_id("gwX", "GWX-1")


def _add_service(engine: Engine, name: str) -> None:
    now = utcnow()
    with write_session(engine) as session:
        certs_db.add_certificate(session=session, certificate=Certificate(
            serial=f"{abs(hash(name)):x}", service=name, fingerprint_sha256=f"{name:0>64}",
            not_before=now, not_after=now + timedelta(days=1), issued_at=now, pem="-"))
        session.commit()


def _add_device(engine: Engine, device_id: str) -> None:
    with write_session(engine) as session:
        devices_db.create_device(session=session, device_id=device_id, group="g",
                                 status=DeviceStatus.ACTIVE, now=utcnow())
        session.commit()


def _check(engine: Engine, identity: Identity) -> None:
    with write_session(engine) as session:
        names_db.require_disjoint(session=session, identity=identity)


@pytest.mark.parametrize("device_id", ["gwX", "gwX-0", "gwX_a", "gwX.b.c"])
def test_a_device_may_not_be_a_client_id_of_a_service(engine: Engine, device_id: str) -> None:
    _add_service(engine, "gwX")
    with pytest.raises(ConflictError, match="collides with service/gwX") as info:
        _check(engine, Identity("device", device_id))
    assert info.value.context == {"device_id": device_id, "collides_with": "service/gwX"}


@pytest.mark.parametrize("service", ["gwX", "gwX-sensor", "gwX-sensor-1"])
def test_a_service_may_not_claim_a_device_id(engine: Engine, service: str) -> None:
    _add_device(engine, "gwX-sensor-1")
    with pytest.raises(ConflictError, match="collides with device/gwX-sensor-1") as info:
        _check(engine, Identity("service", service))
    assert info.value.context == {"service": service, "collides_with": "device/gwX-sensor-1"}


def test_names_that_only_look_alike_are_disjoint(engine: Engine) -> None:
    for device_id in ["gwX2", "gw", "GWX-1", "gwXsensor", "x-gwX-1", "gaX-1"]:
        _add_device(engine, device_id)
    _add_service(engine, "g_X")
    _check(engine, Identity("service", "gwX"))  # client ids are case-sensitive: not GWX-1
    _check(engine, Identity("service", "g_X"))  # "_" is a character, not a wildcard
    _check(engine, Identity("device", "gwX-1"))
    _check(engine, Identity("device", "g_X2"))
