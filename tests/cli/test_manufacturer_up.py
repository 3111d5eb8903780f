"""Devices with manufacturer certificates (IDevIDs) onboard through a real ``fleet up``, on
SQLite and on PostgreSQL: the README's curl + openssl recipe (openssl makes the vendor CA and
the IDevID, curl enrolls with it and no token, mosquitto_pub connects with the certificate it
got), then ``fleet sim run --idevid`` against the same services, renewing and revoking."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import FLEET_SCRIPT, PROJECT, read_until, service_env
from .test_readme_tour import code_block

pytestmark = pytest.mark.slow

RECIPE = "## Enrolling with a manufacturer certificate"
SERIAL = "SN-0001"
LIFETIME = "15s"
SIM_DEVICES = "40"
TIMEOUT = 180.0


class FleetUp:
    """``fleet up`` on free ports in *directory* (its data dir ``fleet-data``), and a shell and
    the CLI with its environment."""

    def __init__(self, directory: Path, database_url: str | None) -> None:
        self.directory = directory
        extra = {"FLEET_CERTIFICATES_DEVICE_LIFETIME": LIFETIME}
        if database_url is not None:
            extra["FLEET_DATABASE_URL"] = database_url
        self.env = service_env(directory / "fleet-data", **extra)
        self.env["PATH"] = f"{FLEET_SCRIPT.parent}:{self.env.get('PATH', '')}"
        self.process = subprocess.Popen(
            [str(FLEET_SCRIPT), "up", "--est-port", "0", "--mqtt-port", "0"], cwd=directory,
            env=self.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lines = "\n".join(read_until(self.process, r"^data dir: ", timeout=60))
        est = re.search(r"EST listening on https://127\.0\.0\.1:(\d+)/", lines)
        broker = re.search(r"MQTT listening on mqtts://127\.0\.0\.1:(\d+)$", lines, re.M)
        assert est is not None, lines
        assert broker is not None, lines
        self.est_port, self.mqtt_port = est.group(1), broker.group(1)

    def shell(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", f"set -euo pipefail\n{script}"],
                              cwd=self.directory, env=self.env, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)

    def json(self, *args: str) -> object:
        done = subprocess.run([str(FLEET_SCRIPT), *args, "--json"], cwd=self.directory,
                              env=self.env, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
        assert done.returncode == 0, (args, done.stderr)
        return json.loads(done.stdout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_up(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetUp]:
    database_url = (request.getfixturevalue("postgres_database")
                    if request.param == "postgres" else None)
    running = FleetUp(tmp_path, database_url)
    yield running
    running.stop()


def test_manufacturer_certificates_onboard_through_fleet_up(
    fleet_up: FleetUp, tool: Callable[[str], str],
) -> None:
    for name in ("openssl", "curl", "mosquitto_pub"):
        tool(name)
    recipe = (code_block((PROJECT / "README.md").read_text(), RECIPE)
              .replace("127.0.0.1:8443", f"127.0.0.1:{fleet_up.est_port}")
              .replace("-p 8883", f"-p {fleet_up.mqtt_port}"))
    assert fleet_up.est_port in recipe
    assert fleet_up.mqtt_port in recipe
    done = fleet_up.shell(recipe)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    device = fleet_up.json("device", "show", SERIAL)
    assert isinstance(device, dict)
    assert (device["group"], device["status"]) == ("cameras", "active")
    vendor = fleet_up.json("vendor", "show", "acme")
    assert isinstance(vendor, dict)
    assert vendor["enrolled"] == 1

    report_file = fleet_up.directory / "sim.json"
    sim = fleet_up.shell(
        f"fleet sim run --idevid --no-progress --devices {SIM_DEVICES} --duration 20s "
        f"--cert-lifetime {LIFETIME} --revoke 2 --telemetry-interval 2s "
        f"--est-url https://127.0.0.1:{fleet_up.est_port} --mqtt-host 127.0.0.1 "
        f"--mqtt-port {fleet_up.mqtt_port} --json-report {report_file}")
    assert sim.returncode == 0, (sim.stdout[-3000:], sim.stderr[-3000:])
    report = json.loads(report_file.read_text())
    assert report["enrollment"] == {"path": "manufacturer-certificate",
                                    "vendor": f"sim-{report['run_id']}"}
    assert report["enrolled"] == report["connected"] == int(SIM_DEVICES)
    assert report["renewals_ok"] > 0
    assert [r["reenroll"] for r in report["revocations"]] == ["refused", "refused"]
    listed = fleet_up.json("vendor", "list")
    assert isinstance(listed, list)
    assert [v["name"] for v in listed] == ["acme"]  # the run's vendor removed afterwards
