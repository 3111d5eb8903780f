"""The simulator against real `fleet serve est` and `fleet serve broker` processes.

One pair of services (fresh data dir, `fleet init`, 12-second device certificates) serves the
module: a 50-device scenario with renewals, two revocations, a broker restart and misbehaving
devices; then `fleet sim run` itself, and its refusal to run against the wrong lifetime.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from device_sim.chart import render_html
from device_sim.environment import Endpoints
from device_sim.operator import AuthorityOperator
from device_sim.report import build_report
from device_sim.runner import Run
from device_sim.scenario import Misbehavior, load_scenario
from device_sim.services import LocalServices
from fleet.authority import Authority
from fleet.pki import fingerprint_sha256, load_certificate
from fleet.registry import make_engine
from fleet.settings import load_settings

LIFETIME = 12
SCENARIOS = Path(__file__).resolve().parents[2] / "device_sim" / "scenarios"
SERVICE_ENV = {
    "FLEET_CA_PASSPHRASE": "device-sim-end-to-end",
    "FLEET_CERTIFICATES_DEVICE_LIFETIME": f"{LIFETIME}s",
    "FLEET_EST_METRICS_PORT": "0",
}
FLEET = [sys.executable, "-c", "from fleet.cli.app import main; main()"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    running = LocalServices(data_dir=tmp_path_factory.mktemp("sim") / "fleet-data",
                            environ=SERVICE_ENV)
    asyncio.run(running.start())
    yield running
    asyncio.run(running.stop())


@pytest.fixture
def fleet_env(services: LocalServices, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in SERVICE_ENV.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, "FLEET_DATA_DIR": str(services.data_dir)}


def endpoints(services: LocalServices) -> Endpoints:
    root = load_certificate((services.data_dir / "ca" / "root.pem").read_bytes())
    return Endpoints(est_url=services.est_url, mqtt_host=services.host,
                     mqtt_port=services.broker_port, pinned_root_sha256=fingerprint_sha256(root))


def test_small_fleet_lifecycle(services: LocalServices, fleet_env: dict[str, str]) -> None:
    settings = load_settings(environ=fleet_env)
    engine = make_engine(settings.effective_database_url, pool_size=2)
    scenario = load_scenario(SCENARIOS / "lifecycle.toml")
    assert scenario.cert_lifetime == LIFETIME
    run = Run(scenario, endpoints=endpoints(services),
              operator=AuthorityOperator(Authority(settings=settings, engine=engine)),
              restart_broker=services.restart_broker)
    try:
        result = asyncio.run(run.execute())
    finally:
        engine.dispose()
    report = build_report(result)

    assert report["unexpected_errors"] == 0, report["errors"]
    assert report["ok"], [e for e in report["expectations"] if not e["ok"]]
    assert report["devices"] == 50
    assert report["enrolled"] == 49  # the foreign-CA device never enrolls
    assert report["connected"] == report["well_behaved"] == 46
    assert report["renewals_ok"] > 0
    assert report["renewals_failed"] == 0
    assert report["revoked"] == 2
    assert report["revocation_latency_ms"]["count"] == 2
    assert report["revocation_latency_ms"]["p99"] < 1000
    for revocation in report["revocations"]:
        assert revocation["reconnect"] != "connected"
        assert revocation["reenroll"] == "refused"
    assert report["misbehaving"] == 4
    assert report["misbehaving_refused"] == 4
    assert report["misbehaving_admitted"] == 0
    assert set(report["misbehaving_by_kind"]) == {m.value for m in Misbehavior}
    assert report["broker_restarts"][0]["fleet_back_after_s"] is not None
    assert report["messages"]["commands_lost"] == 0
    assert report["messages_sent"] > 0
    assert report["messages_received"] > 0
    assert abs(report["certificate_lifetime_s"] - LIFETIME) < 2

    page = render_html(report)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    svgs = [chunk.split("</svg>")[0] + "</svg>" for chunk in page.split("<svg")[1:]]
    assert len(svgs) == 3
    for svg in svgs:
        ElementTree.fromstring("<svg" + svg)  # well-formed


def fleet_sim(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEET, "sim", "run", "--no-progress", *args], env=env,
                          capture_output=True, text=True, timeout=100, check=False)


def test_fleet_sim_run_writes_reports(services: LocalServices, fleet_env: dict[str, str],
                                      tmp_path: Path) -> None:
    json_path, html_path = tmp_path / "report.json", tmp_path / "report.html"
    done = fleet_sim(fleet_env, "--devices", "8", "--duration", "8s",
                     "--cert-lifetime", f"{LIFETIME}s", "--revoke", "1",
                     "--telemetry-interval", "1s", "--command-interval", "2s",
                     "--est-url", services.est_url, "--mqtt-host", services.host,
                     "--mqtt-port", str(services.broker_port),
                     "--json-report", str(json_path), "--html-report", str(html_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(json_path.read_text())
    for key in ("devices", "enrolled", "connected", "messages_sent", "messages_received",
                "renewals_ok", "renewals_failed", "revoked", "revocation_latency_ms",
                "misbehaving_refused", "unexpected_errors"):
        assert key in report
    assert report["devices"] == report["enrolled"] == report["connected"] == 8
    assert report["revoked"] == 1
    assert set(report["revocation_latency_ms"]) >= {"p50", "p95", "p99"}
    assert report["unexpected_errors"] == 0
    assert "<svg" in html_path.read_text()
    assert "unexpected errors" in done.stdout


def test_fleet_sim_run_refused_lifetime_mismatch(services: LocalServices,
                                                 fleet_env: dict[str, str]) -> None:
    done = fleet_sim(fleet_env, "--devices", "2", "--duration", "20s", "--cert-lifetime", "1h",
                     "--est-url", services.est_url, "--mqtt-host", services.host,
                     "--mqtt-port", str(services.broker_port))
    assert done.returncode == 1
    assert "FLEET_CERTIFICATES_DEVICE_LIFETIME=3600s" in done.stdout


def registry_devices(env: dict[str, str]) -> list[dict[str, object]]:
    done = subprocess.run([*FLEET, "device", "list", "--json"], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    devices: list[dict[str, object]] = json.loads(done.stdout)
    return devices


def sim_devices(env: dict[str, str], run_id: str) -> list[dict[str, object]]:
    return [d for d in registry_devices(env) if str(d["id"]).startswith(f"sim-{run_id}-")]


def test_fleet_sim_run_removes_its_devices_unless_kept(services: LocalServices,
                                                        fleet_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    endpoints_args = ["--est-url", services.est_url, "--mqtt-host", services.host,
                      "--mqtt-port", str(services.broker_port), "--cert-lifetime",
                      f"{LIFETIME}s", "--devices", "3", "--duration", "3s", "--revoke", "1",
                      "--command-interval", "0"]
    removed = fleet_sim(fleet_env, *endpoints_args, "--json-report", str(tmp_path / "a.json"))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "removed 3 simulated device(s) from the registry (2 revoked first, " \
           "cessationOfOperation), revoked 0 unused token(s)" in removed.stderr
    run_id = json.loads((tmp_path / "a.json").read_text())["run_id"]
    assert sim_devices(fleet_env, run_id) == []

    kept = fleet_sim(fleet_env, *endpoints_args, "--keep", "--json-report",
                     str(tmp_path / "b.json"))
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "removed" not in kept.stderr
    run_id = json.loads((tmp_path / "b.json").read_text())["run_id"]
    assert sorted(str(d["status"]) for d in sim_devices(fleet_env, run_id)) == [
        "active", "active", "revoked"]


def sim_device_ids(env: dict[str, str]) -> set[str]:
    """The ids of every simulated device in the registry, of any run."""
    return {str(d["id"]) for d in registry_devices(env) if str(d["id"]).startswith("sim-")}


def _children(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children}


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_fleet_sim_run_stops_its_services_and_removes_its_devices_on_sigterm(
        services: LocalServices, fleet_env: dict[str, str], tmp_path: Path) -> None:
    before = sim_device_ids(fleet_env)
    process = subprocess.Popen(
        [*FLEET, "sim", "run", "--no-progress", "--spawn-services", "--devices", "3",
         "--duration", "120s", "--cert-lifetime", f"{LIFETIME}s", "--command-interval", "0"],
        env=fleet_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_children(process.pid)) < 2:
            time.sleep(0.2)
        spawned = _children(process.pid)
        assert len(spawned) >= 2, "the simulator did not start its services"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and \
                len(sim_device_ids(fleet_env) - before) < 3:
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert "removed 3 simulated device(s) from the registry" in stderr
    assert sim_device_ids(fleet_env) == before
    assert all(_gone(pid) for pid in spawned)


def test_fleet_sim_run_idevid_enrolls_renews_and_removes_its_vendor(
    services: LocalServices, fleet_env: dict[str, str], tmp_path: Path,
) -> None:
    """``--idevid``: the devices enroll with manufacturer certificates of a vendor the run
    registers, then renew and are revoked as in a token run; the vendor goes afterwards."""
    json_path = tmp_path / "report.json"
    done = fleet_sim(fleet_env, "--idevid", "--devices", "6", "--duration", "12s",
                     "--cert-lifetime", f"{LIFETIME}s", "--revoke", "1",
                     "--telemetry-interval", "1s", "--command-interval", "2s",
                     "--est-url", services.est_url, "--mqtt-host", services.host,
                     "--mqtt-port", str(services.broker_port), "--json-report", str(json_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(json_path.read_text())
    vendor = f"sim-{report['run_id']}"
    assert report["enrollment"] == {"path": "manufacturer-certificate", "vendor": vendor}
    assert report["devices"] == report["enrolled"] == report["connected"] == 6
    assert report["renewals_ok"] > 0
    assert report["renewals_failed"] == 0
    assert report["revocations"][0]["reenroll"] == "refused"
    assert f"manufacturer certificates of vendor {vendor}" in done.stdout
    assert f"removed vendor {vendor}" in done.stderr
    listed = subprocess.run([*FLEET, "vendor", "list", "--json"], env=fleet_env,
                            capture_output=True, text=True, timeout=60, check=True)
    assert vendor not in {v["name"] for v in json.loads(listed.stdout)}


def test_fleet_sim_run_names_an_unreachable_est_service(services: LocalServices,
                                                       fleet_env: dict[str, str]) -> None:
    with socket.socket() as reserved:  # bound, not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        done = fleet_sim(fleet_env, "--devices", "2", "--duration", "5s",
                         "--est-url", f"https://127.0.0.1:{port}",
                         "--mqtt-host", services.host, "--mqtt-port", str(services.broker_port))
    assert done.returncode == 1
    assert done.stderr == (f"error: EST service https://127.0.0.1:{port}: cacerts: cannot "
                           f"connect: [Errno 111] Connect call failed ('127.0.0.1', {port})\n")
