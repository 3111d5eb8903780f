"""The README's tour of the CLI, every command in the order written, against a real data dir.

The commands come from the README itself: the tour's code block, and for its enrollment step
the curl + openssl recipe. ``fleet up &`` runs in the background (on free ports, set through
FLEET_EST_PORT and FLEET_BROKER_PORT, which the recipe's URL and port follow) until the
tour's ``kill %1``. Every other command must exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.ca import PASSPHRASE_ENV

from .helpers import FLEET_SCRIPT, PROJECT, read_until

pytestmark = pytest.mark.slow

README = PROJECT / "README.md"
TOUR = "## A tour of the CLI"
RECIPE = "## Enrolling a device by hand"
ENROLL_STEP = '# enroll sensor-0042 by hand: see "Enrolling a device by hand" below'
BACKGROUND = "fleet up &"
STOP_BACKGROUND = "kill %1"
TIMEOUT = 300


def code_block(markdown: str, heading: str) -> str:
    """The first ```sh block under *heading*."""
    section = markdown[markdown.index(heading):]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no sh block under {heading!r}"
    return match.group(1)


def commands(block: str) -> list[str]:
    """One entry per command (continued lines joined), without trailing comments; of the
    comment lines only the tour's enrollment step."""
    joined = re.sub(r"\\\n\s*", "", block)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line == ENROLL_STEP:
            found.append(line)
        elif line and not line.startswith("#"):
            found.append(re.sub(r"\s+#.*$", "", line))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_readme_tour_runs_in_the_order_written(tmp_path: Path,
                                               tool: Callable[[str], str]) -> None:
    for name in ("openssl", "curl", "mosquitto_pub"):
        tool(name)
    here = tmp_path / "tour"  # the empty directory the tour starts in
    here.mkdir()
    up_log = tmp_path / "fleet-up.log"
    markdown = README.read_text()
    tour = commands(code_block(markdown, TOUR))
    assert tour.count(ENROLL_STEP) == 1
    assert tour.count(BACKGROUND) == tour.count(STOP_BACKGROUND) == 1
    est_port, mqtt_port = free_port(), free_port()
    recipe = (code_block(markdown, RECIPE).replace("127.0.0.1:8443", f"127.0.0.1:{est_port}")
              .replace("-p 8883", f"-p {mqtt_port}"))
    assert str(est_port) in recipe
    assert str(mqtt_port) in recipe
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLEET_") and k != PASSPHRASE_ENV}
    env.update({"PATH": f"{FLEET_SCRIPT.parent}:{env.get('PATH', '')}",
                "FLEET_EST_PORT": str(est_port), "FLEET_BROKER_PORT": str(mqtt_port),
                "FLEET_EST_METRICS_PORT": "0", "FLEET_BROKER_METRICS_PORT": "0"})

    def shell(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", f"set -euo pipefail\n{script}"], cwd=here,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)

    background: subprocess.Popen[str] | None = None
    try:
        for command in tour:
            if command == ENROLL_STEP:
                done = shell(recipe)
            elif command == BACKGROUND:
                with up_log.open("w") as log:  # a file: nobody reads its logs while it runs
                    background = subprocess.Popen(
                        ["bash", "-c", f"exec {command.removesuffix('&').strip()}"], cwd=here,
                        env=env, text=True, stdout=subprocess.PIPE, stderr=log)
                read_until(background, r"^data dir: ", timeout=60)
                continue
            elif command == STOP_BACKGROUND:
                assert background is not None
                background.send_signal(signal.SIGTERM)
                assert background.wait(60) == 0, up_log.read_text()[-3000:]
                background = None
                continue
            else:
                done = shell(command)
            assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
    finally:
        if background is not None and background.poll() is None:
            background.kill()
            background.wait(10)
    assert (here / "restored" / "fleet.db").exists()
    assert (here / "sim.html").exists()
    # sensor-0042 deleted by the tour, the simulated devices by the simulator
    listed = shell("fleet device list --json")
    assert (listed.returncode, listed.stdout.strip()) == (0, "[]")
