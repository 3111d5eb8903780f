"""The amqtt plugin Fleet loads: accept only gated connections.

It reads the identity from the connection the CONNECT gate bound to the session (the live
TLS connection), never from the client id or any other stored session state, and never
raises: an exception in an amqtt plugin leaves a client without CONNACK. amqtt wants at
least one auth plugin to answer. The topic policy is no plugin: the broker asks the live
connection itself (fleet.broker.engine).
"""

from __future__ import annotations

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from fleet.broker.connection import connection_of


class CertificateAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """A session is authenticated only if the gate admitted its live connection."""

    async def authenticate(self, *, session: Session) -> bool:
        connection = connection_of(session)
        return (connection is not None and connection.session is session
                and not connection.closing
                and connection.client_id == getattr(session, "client_id", None))

