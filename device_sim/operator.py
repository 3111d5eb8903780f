"""The people around the devices: factory tooling mints tokens, the operator declares the
group, registers the vendor of devices that enroll with a manufacturer certificate, revokes
devices and, after the run, cleans up.

They act through Fleet's public Python API (:class:`fleet.authority.Authority`) exactly as the
``fleet token create``, ``fleet vendor add`` and ``fleet device revoke`` commands do; the
devices themselves never touch it. This is the operator side of the wire, the one module of
the simulator on Fleet's core. Database calls block, so each runs in a thread off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from cryptography import x509

from fleet.authority import Authority
from fleet.authority.lifecycle import DELETABLE
from fleet.pki import PrivateKey, generate_private_key, private_key_pem
from fleet.registry import devices as devices_db
from fleet.registry import groups as groups_db
from fleet.registry import session, utcnow
from fleet.registry import tokens as tokens_db
from fleet.tokens import parse_token

FACTORY_ACTOR = "factory:fleet-sim"
OPERATOR_ACTOR = "operator:fleet-sim"
RETIRED = "cessationOfOperation"
"""The revocation reason for simulated devices still active when the run is cleaned up."""


@dataclass(frozen=True, slots=True)
class Created:
    """What a run put into the registry: the ids of its devices (those that enrolled have a
    row), the tokens it minted, its group when the run declared it and the vendor it
    registered."""

    device_ids: list[str]
    tokens: list[str]
    group: str | None
    vendor: str | None = None

    @property
    def empty(self) -> bool:
        """Nothing to clean up: the run stopped before it minted a token, declared a group or
        registered a vendor (no device can have enrolled)."""
        return not self.tokens and self.group is None and self.vendor is None


@dataclass(frozen=True, slots=True)
class Cleanup:
    """What cleaning up after a run removed."""

    deleted: int  # devices deleted from the registry
    revoked: int  # of them, revoked first (still active or suspended at the end)
    tokens_revoked: int  # minted tokens no device used
    group_deleted: str | None
    vendor_removed: str | None = None

    def line(self) -> str:
        vendor = f", removed vendor {self.vendor_removed}" if self.vendor_removed else ""
        group = f", deleted group {self.group_deleted}" if self.group_deleted else ""
        return (f"removed {self.deleted} simulated device(s) from the registry ({self.revoked} "
                f"revoked first, {RETIRED}), revoked {self.tokens_revoked} unused token(s)"
                f"{vendor}{group}; their certificates and audit events stay (--keep keeps the "
                "devices)")


@dataclass(frozen=True, slots=True)
class ServiceCredentials:
    """A backend service's certificate and key (PEM)."""

    name: str
    certificate: x509.Certificate
    key_pem: bytes


class FleetOperator(Protocol):
    """What a run needs from factory tooling and from an operator."""

    async def declare_group(self, group: str) -> bool: ...

    async def mint_tokens(self, *, group: str, count: int) -> list[str]: ...

    async def register_vendor(self, *, name: str, ca_pem: str, group: str,
                              allowed: Sequence[str]) -> None: ...

    async def revoke_device(self, device_id: str) -> None: ...

    async def service_credentials(self, name: str) -> ServiceCredentials: ...

    async def clean_up(self, created: Created) -> Cleanup: ...


class AuthorityOperator:
    """:class:`FleetOperator` on an :class:`Authority` over the registry the services use."""

    def __init__(self, authority: Authority, *, token_ttl_seconds: float = 6 * 3600) -> None:
        self.authority = authority
        self.token_ttl_seconds = token_ttl_seconds

    async def declare_group(self, group: str) -> bool:
        """``fleet group create GROUP`` unless it is declared; True when this call did."""
        return await asyncio.to_thread(self.authority.ensure_group, name=group,
                                       actor=OPERATOR_ACTOR)

    async def mint_tokens(self, *, group: str, count: int) -> list[str]:
        """One single-use bootstrap token per device, as a factory line provisions them."""
        issued = await asyncio.to_thread(
            self.authority.create_tokens, group=group, actor=FACTORY_ACTOR, count=count,
            uses=1, ttl=timedelta(seconds=self.token_ttl_seconds))
        return [str(item.token) for item in issued]

    async def register_vendor(self, *, name: str, ca_pem: str, group: str,
                              allowed: Sequence[str]) -> None:
        """``fleet vendor add NAME --ca CA.pem --group GROUP --allow IDS.csv``: the vendor's
        manufacturer certificates name the device in their serialNumber."""
        await asyncio.to_thread(self.authority.add_vendor, name=name, ca_pem=ca_pem.encode(),
                                group=group, actor=OPERATOR_ACTOR, allowed=list(allowed))

    async def revoke_device(self, device_id: str) -> None:
        """``fleet device revoke ID --reason keyCompromise``."""
        await asyncio.to_thread(self.authority.revoke_device, device_id=device_id,
                                reason="keyCompromise", actor=OPERATOR_ACTOR)

    async def service_credentials(self, name: str) -> ServiceCredentials:
        """``fleet cert issue-service NAME``: the identity of the backend that commands devices."""
        key: PrivateKey = generate_private_key("p256")
        issued = await asyncio.to_thread(
            self.authority.issue_service_certificate, name=name, public_key=key.public_key(),
            actor=OPERATOR_ACTOR)
        return ServiceCredentials(name=name, certificate=issued.certificate,
                                  key_pem=private_key_pem(key))

    async def clean_up(self, created: Created) -> Cleanup:
        """Remove the run's vendor (``fleet vendor remove``), so that no more devices enroll,
        revoke what is still live and delete the run's devices (``fleet device delete``),
        revoke the tokens no device used, and delete the group if the run declared it and
        nothing else is in it."""
        return await asyncio.to_thread(self._clean_up, created)

    def _clean_up(self, created: Created) -> Cleanup:
        authority = self.authority
        if created.vendor is not None:
            authority.remove_vendor(name=created.vendor, actor=OPERATOR_ACTOR)
        now = utcnow()
        with session(authority.engine) as db:
            devices = [row for row in (devices_db.get_device(session=db, device_id=device_id)
                                       for device_id in created.device_ids) if row is not None]
            unused = [row.id for row in (
                tokens_db.get_token(session=db, token_id=parse_token(token).token_id)
                for token in created.tokens)
                if row is not None and row.revoked_at is None and row.uses_left > 0]
        revoked = 0
        for device in devices:
            if device.status not in DELETABLE:
                authority.revoke_device(device_id=device.id, reason=RETIRED,
                                        actor=OPERATOR_ACTOR)
                revoked += 1
            authority.delete_device(device_id=device.id, actor=OPERATOR_ACTOR)
        for token_id in unused:
            authority.revoke_token(token_id=token_id, actor=OPERATOR_ACTOR)
        group = created.group
        if group is not None:
            with session(authority.engine) as db:
                occupied = group in groups_db.members(session=db, now=now, group=group)
            if occupied:
                group = None
            else:
                authority.delete_group(name=group, actor=OPERATOR_ACTOR)
        return Cleanup(deleted=len(devices), revoked=revoked, tokens_revoked=len(unused),
                       group_deleted=group, vendor_removed=created.vendor)
