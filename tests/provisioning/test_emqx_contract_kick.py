"""Contract tests of the EMQX revocation hook against a fake of EMQX's REST kick endpoint.

The endpoint is EMQX 5's ``DELETE /api/v5/clients/{clientid}`` (204 when the client was
kicked, 404 when no such client is connected), authenticated with an API key and its secret
as HTTP Basic: https://docs.emqx.com/en/emqx/latest/admin/api.html and the clients API of
https://docs.emqx.com/en/emqx/latest/admin/api-docs.html
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from est_support import Est, make_csr
from typer.testing import CliRunner

from fleet import pki
from fleet.cli.app import app
from fleet.integrations.emqx_kick import EmqxKicker, parse_api_key
from fleet.integrations.hook import Credentials, Retry

KEY = Credentials("fleet-hook", "s3cret-value")
EXPECTED_AUTH = "Basic " + base64.b64encode(b"fleet-hook:s3cret-value").decode()


@dataclass
class FakeEmqx:
    """EMQX's kick endpoint: answers each DELETE with the next status of *statuses* (the
    last one repeats) and records what it was sent."""

    statuses: list[int] = field(default_factory=lambda: [204])
    delay: float = 0.0
    requests: list[tuple[str, str | None, float]] = field(default_factory=list)
    url: str = ""

    async def kick(self, request: web.Request) -> web.Response:
        self.requests.append((request.match_info["clientid"],
                              request.headers.get("Authorization"), time.monotonic()))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return web.Response(status=status)

    def kicked(self) -> list[str]:
        return [client_id for client_id, _, _ in self.requests]


@asynccontextmanager
async def fake_emqx(fake: FakeEmqx) -> AsyncIterator[FakeEmqx]:
    application = web.Application()
    application.router.add_delete("/api/v5/clients/{clientid}", fake.kick)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@asynccontextmanager
async def kicker(est: Est, fake: FakeEmqx, **options: Any) -> AsyncIterator[EmqxKicker]:
    options.setdefault("poll_interval", 0.05)
    hook = EmqxKicker(authority=est.authority, api_url=fake.url, api_key=KEY,
                      retry=Retry(first_delay=0.02), **options)
    await hook.start()
    try:
        yield hook
    finally:
        await hook.close()


async def until(condition: Callable[[], bool], *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def fleet_cli(est: Est, *args: str) -> None:
    result = CliRunner().invoke(app, ["--data-dir", str(est.settings.data_dir), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)


def test_emqx_contract_kick_follows_fleet_device_revoke_within_a_bound(est: Est) -> None:
    est.device("d1")
    est.device("d2")

    async def main() -> None:
        async with fake_emqx(FakeEmqx()) as fake, kicker(est, fake):
            revoked_at = time.monotonic()
            await asyncio.to_thread(fleet_cli, est, "device", "revoke", "d1",
                                    "--reason", "keyCompromise")
            await until(lambda: bool(fake.requests))
            [(client_id, authorization, at)] = fake.requests
            assert client_id == "d1"
            assert authorization == EXPECTED_AUTH
            assert at - revoked_at < 2.0, f"kick {at - revoked_at:.2f}s after the revoke"

    run(main)


def test_emqx_contract_kick_process_follows_fleet_device_revoke(est: Est,
                                                                 tmp_path: Path) -> None:
    """`fleet serve emqx-kick` as its own process, at the default poll interval."""
    est.device("d1")
    key_file = tmp_path / "emqx-api-key"
    key_file.write_text(f"{KEY.user}:{KEY.secret}\n")
    env = {**os.environ, "FLEET_DATA_DIR": str(est.settings.data_dir)}

    async def main() -> None:
        async with fake_emqx(FakeEmqx()) as fake:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "fleet"), "serve", "emqx-kick",
                 "--api-url", fake.url, "--api-key-file", str(key_file)],
                env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert process.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
                assert "EMQX kick hook following revocations" in line, line
                revoked_at = time.monotonic()
                await asyncio.to_thread(fleet_cli, est, "device", "revoke", "d1",
                                        "--reason", "keyCompromise")
                await until(lambda: bool(fake.requests))
                [(client_id, authorization, at)] = fake.requests
                assert (client_id, authorization) == ("d1", EXPECTED_AUTH)
                assert at - revoked_at < 2.0, f"kick {at - revoked_at:.2f}s after the revoke"
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 20) == 0
                assert process.stderr is not None
                assert KEY.secret not in process.stderr.read()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)

    run(main)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_emqx_contract_kick_is_pushed_on_postgres_with_a_minute_poll_interval(
        est_any_db: Est) -> None:
    """The hook listens for the NOTIFY of each revocation event (fleet.registry.notify)."""
    est_any_db.device("d1")

    async def main() -> None:
        async with fake_emqx(FakeEmqx()) as fake, \
                kicker(est_any_db, fake, poll_interval=60.0) as hook:
            await until(lambda: hook.follower.wakeup.listening)
            revoked_at = time.monotonic()
            await asyncio.to_thread(est_any_db.authority.revoke_device, device_id="d1",
                                    reason="keyCompromise", actor="test")
            await until(lambda: bool(fake.requests), within=2.0)
            assert fake.kicked() == ["d1"]
            assert fake.requests[0][2] - revoked_at < 1.0

    run(main)


def test_emqx_contract_kick_is_retried_on_5xx(est: Est) -> None:
    est.device("d1")

    async def main() -> None:
        async with fake_emqx(FakeEmqx(statuses=[503, 500, 502, 204])) as fake, \
                kicker(est, fake) as hook:
            est.authority.revoke_device(device_id="d1", reason="keyCompromise", actor="test")
            await until(lambda: hook.done == 1)
            assert fake.kicked() == ["d1"] * 4
            assert {auth for _, auth, _ in fake.requests} == {EXPECTED_AUTH}

    run(main)


@pytest.mark.parametrize(("status", "kicked", "failed"), [(404, 1, 0), (401, 0, 1)])
def test_emqx_contract_kick_4xx_is_not_retried(est: Est, status: int, kicked: int,
                                               failed: int) -> None:
    """404: the client is not connected (done); 401: a wrong API key (logged, given up)."""
    est.device("d1")

    async def main() -> None:
        async with fake_emqx(FakeEmqx(statuses=[status])) as fake, kicker(est, fake) as hook:
            est.authority.revoke_device(device_id="d1", reason="keyCompromise", actor="test")
            await until(lambda: hook.done + hook.failed == 1)
            await asyncio.sleep(0.2)
            assert (hook.done, hook.failed) == (kicked, failed)
            assert fake.kicked() == ["d1"]

    run(main)


def test_emqx_contract_kick_gives_up_after_max_attempts(est: Est) -> None:
    est.device("d1")

    async def main() -> None:
        async with fake_emqx(FakeEmqx(statuses=[503])) as fake, \
                kicker(est, fake) as hook:
            hook._retry = Retry(max_attempts=3, first_delay=0.01)
            est.authority.revoke_device(device_id="d1", reason="keyCompromise", actor="test")
            await until(lambda: hook.failed == 1)
            assert fake.kicked() == ["d1"] * 3

    run(main)


def test_emqx_contract_kick_queue_is_bounded_and_loses_nothing(est: Est) -> None:
    """With room for one kick and one slow sender, the follower waits: every revoked device
    is kicked, in the order of the revocations."""
    names = [f"d{n}" for n in range(6)]
    for name in names:
        est.device(name)

    async def main() -> None:
        async with fake_emqx(FakeEmqx(delay=0.1)) as fake, \
                kicker(est, fake, queue_size=1, senders=1) as hook:
            for name in names:
                est.authority.revoke_device(device_id=name, reason="keyCompromise",
                                            actor="test")
            await until(lambda: hook._queue.full())
            assert hook._queue.qsize() == 1
            await until(lambda: hook.done == len(names))
            assert fake.kicked() == names

    run(main)


def test_emqx_contract_kick_suspension_and_service_revocation_not_renewal(est: Est) -> None:
    device = est.device("d1")
    est.device("d2")
    key = pki.generate_private_key()
    service = est.authority.issue_service_certificate(name="ingest",
                                                      public_key=key.public_key(),
                                                      actor="test")

    async def main() -> None:
        async with fake_emqx(FakeEmqx()) as fake, kicker(est, fake) as hook:
            est.authority.reenroll(client_certificate=device.certificate,
                                   csr=make_csr("d1"), actor="test")  # superseded: no kick
            est.authority.suspend_device(device_id="d2", actor="test")
            est.authority.revoke_certificate(serial=service.record.serial,
                                             reason="keyCompromise", actor="test")
            await until(lambda: hook.done == 2)
            await asyncio.sleep(0.2)
            assert fake.kicked() == ["d2", "ingest"]

    run(main)


def test_emqx_contract_kick_api_key_is_key_colon_secret_and_never_shown() -> None:
    key = parse_api_key("fleet-hook:s3cret-value\n")
    assert (key.user, key.secret) == ("fleet-hook", "s3cret-value")
    assert "s3cret" not in repr(key)
    for bad in ("no-colon", ":secret", "key:"):
        with pytest.raises(Exception, match="KEY:SECRET"):
            parse_api_key(bad)
