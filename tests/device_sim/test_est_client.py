"""The simulator's EST client against the real EST service: trust, enroll, renew, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from device_sim.credentials import Credentials
from device_sim.crypto import build_csr, generate_key, self_signed_ca
from device_sim.est_client import ESTHandshakeRefused, ESTRefused
from device_sim.misbehave import foreign_credentials
from device_sim.tls import TrustError, pinned_trust_anchors, provisional_context

from .conftest import Fleet, environment

RunFleet = Callable[[], AsyncIterator[Fleet]]


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def enroll(fleet: Fleet, device_id: str) -> Credentials:
    """Enroll one device the way Device.enroll does, returning its credentials."""
    fleet.authority.ensure_group(name="sim", actor="operator:test")
    token = fleet.authority.create_tokens(group="sim", actor="factory:test")[0].token
    async with environment(fleet.endpoints) as env:
        anchors, trust = await env.trust()
        key = generate_key("p256")
        cert = await env.est.simpleenroll(build_csr(device_id, key), context=trust,
                                          username=device_id, password=str(token))
        return Credentials.issued(key, cert, anchors=anchors, received_at=env.now())


def test_cacerts_holds_the_pinned_root(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet, environment(fleet.endpoints) as env:
            offered = await env.est.cacerts(context=provisional_context())
            anchors = pinned_trust_anchors(offered,
                                           pinned_root_sha256=fleet.endpoints.pinned_root_sha256)
            assert {c.subject for c in anchors} == {fleet.authority.ca.root.subject,
                                                    fleet.authority.ca.issuing.subject}

    asyncio.run(scenario())


def test_trust_refused_unpinned_root(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet, environment(fleet.endpoints) as env:
            offered = await env.est.cacerts(context=provisional_context())
            with pytest.raises(TrustError, match="pinned root"):
                pinned_trust_anchors(offered, pinned_root_sha256="00" * 32)

    asyncio.run(scenario())


def test_trust_refused_intermediate_not_issued_by_the_root(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet, environment(fleet.endpoints) as env:
            offered = await env.est.cacerts(context=provisional_context())
            _, stranger = self_signed_ca("Stranger CA", lifetime=timedelta(days=1))
            with pytest.raises(TrustError, match="not issued by the pinned root"):
                pinned_trust_anchors([*offered, stranger],
                                     pinned_root_sha256=fleet.endpoints.pinned_root_sha256)

    asyncio.run(scenario())


def test_simpleenroll_then_simplereenroll_with_a_new_key(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet:
            first = await enroll(fleet, "dev-renew")
            assert cn(first.certificate) == "dev-renew"
            assert 3500 < first.lifetime <= 3600
            async with environment(fleet.endpoints) as env:
                key = generate_key("p256")
                renewed = await env.est.simplereenroll(build_csr("dev-renew", key),
                                                       context=first.context)
            assert cn(renewed) == "dev-renew"
            assert renewed.serial_number != first.certificate.serial_number
            assert renewed.public_key() == key.public_key()

    asyncio.run(scenario())


def test_simpleenroll_refused_bad_token(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet, environment(fleet.endpoints) as env:
            _, trust = await env.trust()
            with pytest.raises(ESTRefused) as refused:
                await env.est.simpleenroll(build_csr("dev-x", generate_key("p256")), context=trust,
                                           username="dev-x",
                                           password="0123456789abcdef." + "A" * 32)
            assert refused.value.status == 401

    asyncio.run(scenario())


def test_simplereenroll_refused_revoked_device(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet:
            credentials = await enroll(fleet, "dev-revoked")
            fleet.authority.revoke_device(device_id="dev-revoked", reason="keyCompromise",
                                          actor="operator:test")
            async with environment(fleet.endpoints) as env:
                with pytest.raises(ESTRefused) as refused:
                    await env.est.simplereenroll(build_csr("dev-revoked", generate_key("p256")),
                                                 context=credentials.context)
            assert refused.value.status == 403

    asyncio.run(scenario())


def test_simplereenroll_refused_foreign_ca(run_fleet: RunFleet) -> None:
    async def scenario() -> None:
        async with run_fleet() as fleet, environment(fleet.endpoints) as env:
            anchors, _ = await env.trust()
            forged = foreign_credentials("dev-f", trust_domain=fleet.settings.trust_domain,
                                         anchors=anchors, received_at=0.0)
            with pytest.raises(ESTHandshakeRefused):
                await env.est.simplereenroll(build_csr("dev-f", forged.key),
                                             context=forged.context)

    asyncio.run(scenario())
