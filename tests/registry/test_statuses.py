"""fleet.registry.statuses: which of many devices and certificates are withdrawn."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from fleet.registry import CertificateStatus, DeviceStatus, statuses
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import write_session

from .test_registry import NOW, add_device, cert_row


def test_withdrawn_names_devices_not_active_and_certificates_revoked_or_gone(
        engine: Engine) -> None:
    for device_id in ("active", "suspended", "revoked"):
        add_device(engine, device_id)
    with write_session(engine) as session:
        for device_id, status in (("suspended", DeviceStatus.SUSPENDED),
                                  ("revoked", DeviceStatus.REVOKED)):
            device = devices_db.get_device(session=session, device_id=device_id)
            assert device is not None
            devices_db.set_device_status(session=session, device=device, status=status,
                                         reason=None, now=NOW)
        for serial, status in (("a1", CertificateStatus.ACTIVE),
                               ("a2", CertificateStatus.SUPERSEDED),
                               ("a3", CertificateStatus.REVOKED)):
            certs_db.add_certificate(session=session,
                                     certificate=cert_row(serial, "active", status=status))
        session.commit()
    gone = {f"gone-{n}" for n in range(2 * statuses.IN_BATCH + 1)}  # three IN (...) batches
    with new_session(engine) as session:
        withdrawn = statuses.withdrawn(
            session=session, device_ids={"active", "suspended", "revoked", *gone},
            serials={"a1", "a2", "a3", "ff"})
    assert withdrawn.devices == {"suspended": "suspended", "revoked": "revoked",
                                 **dict.fromkeys(gone, statuses.GONE)}
    assert withdrawn.serials == {"a3": "revoked", "ff": statuses.GONE}

