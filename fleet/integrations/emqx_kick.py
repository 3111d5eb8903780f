"""The EMQX revocation hook: kicks revoked and suspended identities off EMQX through its REST
API (``DELETE /api/v5/clients/{clientid}``, authenticated with an API key as HTTP Basic).

It follows the registry's revocation events (fleet.integrations.follower: every
``broker.revocation_poll_interval`` and at once when PostgreSQL announces one, starting after
the newest event) through fleet.integrations.hook, which queues the client id to kick (a
device's id, or the name of the service a certificate belongs to) and retries a kick with a
doubling backoff while EMQX answers 5xx or 429 or cannot be reached. 404 means the client is
not connected (nothing to do); another 4xx (a wrong API key, say) is logged and not retried.

A kick only ends the live session: the client's next CONNECT is decided again by Fleet
(``POST /emqx/authn``), which refuses a revoked or suspended identity.
"""

from __future__ import annotations

import logging
import ssl
from urllib.parse import quote

from fleet.authority.admission import AdmissionPolicy
from fleet.integrations.hook import Credentials, Retry, RevocationHook

log = logging.getLogger(__name__)

CLIENTS_PATH = "/api/v5/clients/"


def parse_api_key(text: str) -> Credentials:
    """``KEY:SECRET``, as EMQX shows a new API key."""
    return Credentials.parse(text, what="an EMQX API key", form="KEY:SECRET")


class EmqxKicker(RevocationHook):
    """Follows the revocation events and kicks the client ids they name."""

    what = "EMQX kick hook"

    def __init__(self, *, authority: AdmissionPolicy, api_url: str, api_key: Credentials,
                 ssl_context: ssl.SSLContext | None = None, poll_interval: float | None = None,
                 queue_size: int = 1000, senders: int = 4, retry: Retry | None = None) -> None:
        super().__init__(authority=authority, credentials=api_key, ssl_context=ssl_context,
                         poll_interval=poll_interval, queue_size=queue_size, senders=senders,
                         retry=retry)
        self._base = api_url.rstrip("/") + CLIENTS_PATH

    async def act(self, identity: str) -> bool:
        """Kick one client id; True once EMQX has no session of it."""
        reply = await self.request("DELETE", self._base + quote(identity, safe=""),
                                   identity=identity)
        if reply is None:
            return False
        if reply.status < 300 or reply.status == 404:
            log.info("EMQX kick of %r: %s", identity,
                     "not connected" if reply.status == 404 else "done")
            return True
        log.error("EMQX refused the kick of %r with %d; check the API key and URL", identity,
                  reply.status)
        return False
