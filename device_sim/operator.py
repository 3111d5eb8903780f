"""The people around the devices: factory tooling mints tokens, the operator declares the
group and revokes devices.

They act through Fleet's public Python API (:class:`fleet.authority.Authority`) exactly as the
``fleet token create`` and ``fleet device revoke`` commands do; the devices themselves never
touch it. Database calls block, so each runs in a thread off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from cryptography import x509

from fleet.authority import Authority
from fleet.pki import PrivateKey, generate_private_key, private_key_pem

FACTORY_ACTOR = "factory:fleet-sim"
OPERATOR_ACTOR = "operator:fleet-sim"


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

    async def revoke_device(self, device_id: str) -> None: ...

    async def service_credentials(self, name: str) -> ServiceCredentials: ...


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
