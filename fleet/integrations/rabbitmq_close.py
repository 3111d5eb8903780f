"""The RabbitMQ revocation hook: closes the live connections of revoked and suspended
identities through RabbitMQ's management API, as the management user `fleet export
rabbitmq` defines (HTTP Basic).

It follows the revocation events through fleet.integrations.hook (the identity is the CN
RabbitMQ took as the user name: a device's id or a service's name), lists the identity's
connections (``GET /api/connections/username/{user}``) and closes them
(``DELETE /api/connections/username/{user}`` with an ``X-Reason`` header the client's log
shows). Both read RabbitMQ's connection tracking, which knows a connection on any node of
the cluster as soon as it is open; ``DELETE /api/connections/{name}`` reads the management
database instead, which learns of a connection only at its next statistics collection (5 s
by default) and answers 404 until then. A connection whose login RabbitMQ was deciding at
the revocation is tracked a moment later: the identity is looked at again
``recheck_after`` seconds later.

Closing only ends the live connection: RabbitMQ asks Fleet again at the next CONNECT, which
denies a revoked or suspended identity.
"""

from __future__ import annotations

import logging
import ssl
from urllib.parse import quote

from fleet.authority.admission import AdmissionPolicy
from fleet.errors import FleetError
from fleet.integrations.hook import Credentials, Retry, RevocationHook

log = logging.getLogger(__name__)

USER_CONNECTIONS_PATH = "/api/connections/username/"
REASON = "Fleet: the identity was revoked or suspended"


class RabbitmqCloser(RevocationHook):
    """Follows the revocation events and closes the connections of the users they name."""

    what = "RabbitMQ close hook"

    def __init__(self, *, authority: AdmissionPolicy, api_url: str, credentials: Credentials,
                 ssl_context: ssl.SSLContext | None = None, poll_interval: float | None = None,
                 queue_size: int = 1000, senders: int = 4, retry: Retry | None = None,
                 recheck_after: float = 2.0) -> None:
        super().__init__(authority=authority, credentials=credentials, ssl_context=ssl_context,
                         poll_interval=poll_interval, queue_size=queue_size, senders=senders,
                         retry=retry)
        self._base = api_url.rstrip("/") + USER_CONNECTIONS_PATH
        self._recheck_after = recheck_after
        self.closed = 0
        """Connections RabbitMQ listed and was asked to close."""

    async def act(self, identity: str) -> bool:
        """Close every connection of *identity* now, and look again a moment later."""
        done = await self.close_connections(identity)
        self.once_more(identity, self.close_connections, after=self._recheck_after)
        return done

    async def close_connections(self, identity: str) -> bool:
        """Close the connections RabbitMQ tracks for *identity*; True once it was asked to
        close all of them (or there were none)."""
        url = self._base + quote(identity, safe="")
        names = await self._connections(identity, url)
        if names is None:
            return False
        if not names:
            return True
        reply = await self.request("DELETE", url, identity=identity,
                                   headers={"X-Reason": REASON})
        if reply is None:
            return False
        if reply.status >= 300:
            log.error("%s: RabbitMQ refused to close the connections of %r with %d",
                      self.what, identity, reply.status)
            return False
        self.closed += len(names)
        log.info("%s: closed %d connection(s) of %r: %s", self.what, len(names), identity,
                 ", ".join(names))
        return True

    async def _connections(self, identity: str, url: str) -> list[str] | None:
        reply = await self.request("GET", url, identity=identity)
        if reply is None:
            return None
        if reply.status != 200:
            log.error("%s: RabbitMQ refused to list the connections of %r with %d; check "
                      "the management user and URL", self.what, identity, reply.status)
            return None
        try:
            listed = reply.json()
        except FleetError as error:
            log.error("%s: the connections of %r: %s", self.what, identity, error)
            return None
        if not isinstance(listed, list):
            log.error("%s: the connections of %r are not a list", self.what, identity)
            return None
        return [item["name"] for item in listed
                if isinstance(item, dict) and isinstance(item.get("name"), str)
                and item.get("user") == identity]
