"""Runs whose devices enroll with manufacturer certificates (``idevid``), against the real EST
service and broker: the run's vendor is registered, trusted, used and removed again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from device_sim.operator import AuthorityOperator
from device_sim.report import build_report
from device_sim.runner import Run, RunError
from device_sim.scenario import Misbehavior, Scenario
from fleet.authority import Authority
from fleet.registry import make_engine, migrate
from fleet.registry import session as new_session
from fleet.registry import tokens as tokens_db
from fleet.registry import vendors as vendors_db
from fleet.settings import Settings

from .conftest import Fleet

RunFleet = Callable[[], AsyncIterator[Fleet]]


def test_idevid_run_enrolls_with_manufacturer_certificates_and_removes_its_vendor(
    run_fleet: RunFleet,
) -> None:
    scenario = Scenario(devices=6, duration=6, ramp=0, idevid=True, revoke=1, revoke_at=4,
                        telemetry_interval=1, command_interval=0, misbehaving=0.3,
                        misbehaviors=(Misbehavior.FOREIGN_TOPIC, Misbehavior.FOREIGN_CA),
                        seed=7)

    async def scenario_run() -> None:
        async with run_fleet() as fleet:
            operator = AuthorityOperator(fleet.authority)
            run = Run(scenario, endpoints=fleet.endpoints, operator=operator)
            result = await run.execute()
            report = build_report(result)
            assert report["ok"], ([e for e in report["expectations"] if not e["ok"]],
                                  report["errors"])
            vendor = run.vendor
            assert vendor == f"sim-{run.run_id}"
            assert report["enrollment"] == {"path": "manufacturer-certificate",
                                            "vendor": vendor}
            assert report["enrolled"] == 5  # the foreign-CA device never enrolls
            assert report["connected"] == report["well_behaved"] == 4
            assert report["revocations"][0]["reenroll"] == "refused"
            assert report["misbehaving_refused"] == 2
            engine = fleet.authority.engine
            with new_session(engine) as session:
                assert list(tokens_db.list_tokens(session=session)) == []  # no token minted
                recorded = {device_id: [r.vendor for r in vendors_db.records_of_device(
                    session=session, device_id=device_id)] for device_id in run.device_ids}
            enrolled = [d.id for d in result.devices if d.enrolled_at is not None]
            assert {device_id: recorded[device_id] for device_id in enrolled} == {
                device_id: [vendor] for device_id in enrolled}

            cleanup = await operator.clean_up(run.created)
            assert (cleanup.vendor_removed, cleanup.deleted, cleanup.group_deleted) == (
                vendor, 5, "sim")
            assert f"revoked 0 unused token(s), removed vendor {vendor}, deleted group sim" \
                in cleanup.line()
            with new_session(engine) as session:
                assert vendors_db.list_vendors(session=session) == []

    asyncio.run(scenario_run())


def test_idevid_run_stops_when_the_est_service_never_trusts_its_vendor(
    run_fleet: RunFleet, sim_settings: Settings, tmp_path: Path,
) -> None:
    """The vendor lands in another registry than the EST service's: the run waits out its
    deadline and stops, naming the service and the vendor, instead of failing every device."""
    elsewhere = make_engine(f"sqlite:///{tmp_path / 'elsewhere.db'}", create=True)
    migrate(elsewhere)
    operator = AuthorityOperator(Authority(settings=sim_settings, engine=elsewhere))

    async def scenario_run() -> None:
        async with run_fleet() as fleet:
            run = Run(Scenario(devices=2, duration=5, idevid=True), endpoints=fleet.endpoints,
                      operator=operator, vendor_trust_timeout=1.0)
            with pytest.raises(RunError, match=(
                    rf"^EST service {fleet.endpoints.est_url} did not accept the manufacturer "
                    rf"certificates of vendor sim-{run.run_id} within 1 s of registering it "
                    r"\(does it serve the registry of this data dir\?\): ")):
                await run.execute()
            assert (await operator.clean_up(run.created)).vendor_removed == f"sim-{run.run_id}"

    try:
        asyncio.run(scenario_run())
    finally:
        elsewhere.dispose()
