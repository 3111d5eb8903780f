"""amqtt plugins: accept only gated connections, and apply the topic policy.

Both read the identity from the connection the CONNECT gate bound to the session (the live
TLS connection), never from the client id or any other stored session state. Neither raises:
an exception in an amqtt plugin leaves a client without CONNACK.
"""

from __future__ import annotations

import logging

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from fleet.broker.connection import connection_of

log = logging.getLogger(__name__)


class CertificateAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """A session is authenticated only if the gate admitted its live connection."""

    async def authenticate(self, *, session: Session) -> bool:
        connection = connection_of(session)
        return (connection is not None and connection.session is session
                and not connection.closing
                and connection.client_id == getattr(session, "client_id", None))


class TopicPolicyPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """PUBLISH, SUBSCRIBE and RECEIVE (delivery, retained messages included) by policy."""

    def allows(self, session: Session | None, topic: str | None, action: Action | None) -> bool:
        connection = connection_of(session)
        if connection is None or topic is None:
            return False
        try:
            if action is Action.PUBLISH:
                return connection.may_publish(topic)
            if action is Action.SUBSCRIBE:
                return connection.grants.may_subscribe(topic)
            if action is Action.RECEIVE:
                return connection.may_receive(topic)
        except Exception:  # a plugin must never raise; deny instead
            log.exception("topic check failed for %s on %r", connection, topic)
        return False

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        return self.allows(session, topic, action)
