"""The Mosquitto revocation hook: kicks revoked and suspended identities off Mosquitto 2.0
through its dynamic security plugin, over one MQTT connection with a service certificate.

It follows the revocation events through fleet.integrations.hook (the identity is the CN
Mosquitto took as the user name: a device's id or a service's name) and sends, for each one,
``createClient`` then ``deleteClient`` of that user name in one message on
``$CONTROL/dynamic-security/v1``: deleting a client of the plugin disconnects every client
connected under its user name at once, and the create makes sure there is one to delete. The
plugin answers every command on ``$CONTROL/dynamic-security/v1/response`` with the
``correlationData`` it was given and an ``error`` when it failed. "Client already exists"
from the create (a client of that name was left in the plugin) does not matter, as the delete
follows; an error from the delete means nothing was kicked and is not retried. The pair leaves
the plugin's state as it found it, so sending it twice is harmless: a command that got no
answer (Mosquitto unreachable, the connection lost) is sent again with a doubling backoff, up
to ``max_attempts``, each attempt waiting up to ``answer_timeout`` for a connection and the
answer. The connection (paho-mqtt, in its own thread) reconnects by itself with a doubling
delay of 1 to 8 s.

The kick ends the live session only: the plugin cannot refuse the next CONNECT of a
certificate client (it checks passwords, and Mosquitto asks for none with
``use_identity_as_username``); Mosquitto's CRL does, once ``fleet crl --watch --signal`` has
rewritten it and Mosquitto has read it again. A client that reconnected before that would
stay, so every identity is kicked once more ``again_after`` seconds later. The hook never
kicks its own identity, which would delete the plugin's admin.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.authority.admission import AdmissionPolicy
from fleet.integrations.hook import Hook, Retry
from fleet.integrations.mosquitto import DYNSEC_RESPONSE_TOPIC, DYNSEC_TOPIC

log = logging.getLogger(__name__)

ALREADY_EXISTS = "Client already exists"
RECONNECT_DELAYS = (1, 8)
"""The shortest and longest wait before paho connects again (it doubles in between)."""

Responses = dict[str, dict[str, Any]]
"""The plugin's answers to one message, by command."""


class MosquittoKicker(Hook):
    """Follows the revocation events and kicks the user names they name off Mosquitto, as
    the dynamic security plugin's client *name* (the CN of the certificate in *ssl_context*)."""

    what = "Mosquitto kick hook"

    def __init__(self, *, authority: AdmissionPolicy, host: str, port: int, name: str,
                 ssl_context: ssl.SSLContext, poll_interval: float | None = None,
                 queue_size: int = 1000, senders: int = 4, retry: Retry | None = None,
                 answer_timeout: float = 5.0, again_after: float = 5.0) -> None:
        super().__init__(authority=authority, poll_interval=poll_interval,
                         queue_size=queue_size, senders=senders, retry=retry)
        self.name = name
        self._host, self._port = host, port
        self._answer_timeout = answer_timeout
        self._again_after = again_after
        self._paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name,
                                 clean_session=True, protocol=mqtt.MQTTv311)
        self._paho.tls_set_context(ssl_context)
        self._paho.reconnect_delay_set(*RECONNECT_DELAYS)
        self._paho.on_connect = self._on_connect
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_message = self._on_message
        self._paho.on_disconnect = self._on_disconnect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        """Connected and subscribed to the plugin's answers."""
        self._answers: dict[str, asyncio.Future[Responses]] = {}
        self._ids = itertools.count(1)

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._paho.connect_async(self._host, self._port, keepalive=30)
        self._paho.loop_start()  # connects, and connects again, in its own thread

    async def shut(self) -> None:
        self._paho.disconnect()
        await asyncio.to_thread(self._paho.loop_stop)

    async def act(self, identity: str) -> bool:
        """Kick *identity* now, and once more ``again_after`` seconds later."""
        if identity == self.name:
            log.error("%s: not kicking %r, its own identity (the plugin's admin)", self.what,
                      identity)
            return False
        kicked = await self.kick(identity)
        self.once_more(identity, self.kick, after=self._again_after)
        return kicked

    async def kick(self, identity: str) -> bool:
        """createClient + deleteClient of *identity*, sent until the plugin answers; True
        once it confirms the delete."""
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                responses = await asyncio.wait_for(self._command(identity),
                                                   self._answer_timeout)
            except (ConnectionError, TimeoutError) as exc:
                problem = str(exc) or "no answer"
            else:
                return self._read(identity, responses)
            if attempt < self._retry.max_attempts:
                delay = self._retry.delay(attempt)
                log.warning("%s: the kick of %r failed (%s), attempt %d, retrying in %gs",
                            self.what, identity, problem, attempt, delay)
                await asyncio.sleep(delay)
        log.error("%s: the kick of %r given up after %d attempts; is %s:%d up, and is %r the "
                  "dynamic security plugin's admin?", self.what, identity,
                  self._retry.max_attempts, self._host, self._port, self.name)
        return False

    async def _command(self, identity: str) -> Responses:
        await self._ready.wait()
        correlation = f"fleet-{next(self._ids)}"
        assert self._loop is not None
        answer: asyncio.Future[Responses] = self._loop.create_future()
        self._answers[correlation] = answer
        try:
            message = {"commands": [
                {"command": command, "username": identity, "correlationData": correlation}
                for command in ("createClient", "deleteClient")]}
            sent = self._paho.publish(DYNSEC_TOPIC, json.dumps(message), qos=1)
            if sent.rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(mqtt.error_string(sent.rc))
            return await answer
        finally:
            del self._answers[correlation]

    def _read(self, identity: str, responses: Responses) -> bool:
        created = responses.get("createClient", {})
        deleted = responses.get("deleteClient")
        if deleted is None or "error" in deleted:
            log.error("%s: Mosquitto did not kick %r: %s", self.what, identity,
                      deleted.get("error") if deleted else "no answer to deleteClient")
            return False
        if created.get("error") == ALREADY_EXISTS:
            log.warning("%s: the dynamic security plugin had a client %r; it is deleted",
                        self.what, identity)
        elif "error" in created:
            log.warning("%s: createClient %r: %s", self.what, identity, created["error"])
        log.info("%s: kicked %r", self.what, identity)
        return True

    # -- paho's thread ----------------------------------------------------------------------

    def _call(self, function: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(function, *args)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: Any, properties: object) -> None:
        if reason.is_failure:
            log.warning("%s: %s:%d refused the connection: %s", self.what, self._host,
                        self._port, reason)
            return
        client.subscribe(DYNSEC_RESPONSE_TOPIC, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: Any,
                      properties: object) -> None:
        log.info("%s: connected to %s:%d as %r", self.what, self._host, self._port, self.name)
        self._call(self._ready.set)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason: Any, properties: object) -> None:
        log.warning("%s: the connection to %s:%d ended (%s)", self.what, self._host,
                    self._port, reason)
        self._call(self._lost)

    def _lost(self) -> None:
        self._ready.clear()
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the connection to Mosquitto ended"))

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
            responses = [r for r in body["responses"] if isinstance(r, dict)]
        except (ValueError, KeyError, TypeError):
            log.warning("%s: an answer of the plugin that is not its JSON", self.what)
            return
        by_correlation: dict[str, Responses] = {}
        for response in responses:
            correlation, command = response.get("correlationData"), response.get("command")
            if isinstance(correlation, str) and isinstance(command, str):
                by_correlation.setdefault(correlation, {})[command] = response
        for correlation, answered in by_correlation.items():
            self._call(self._answer, correlation, answered)

    def _answer(self, correlation: str, responses: Responses) -> None:
        answer = self._answers.get(correlation)
        if answer is not None and not answer.done():
            answer.set_result(responses)
