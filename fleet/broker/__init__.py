"""The mTLS MQTT broker (MQTT 3.1.1): Fleet's own TLS listener and CONNECT gate in front of an
amqtt broker with Fleet's plugins, and a revocation watcher.

    listener.TLSListener     accept, cap open and pending connections (pending.py), TLS
        |                    handshake (CERT_REQUIRED, fleet CA) under a deadline
    gate.Gate                read the first packet itself: CONNECT checks, registry admission,
        |                    will policy; refuse with CONNACK, or hand the parsed CONNECT to amqtt
    engine.FleetBroker       amqtt, with sessions bound to the live connection, the topic
                             policy of the connection on publish, subscribe and every delivery;
                             amqtt's internals only through amqtt_adapter.py (version checked)
    watcher.RevocationWatcher  poll revocation events; drop what they name, purge what it
                               left behind (sessions, retained messages)
    persistence.Store        the state file: sessions and retained messages across restarts

Entry points: :func:`fleet.broker.server.start` and :func:`fleet.broker.server.serve`.

Decisions worth knowing:

- CONNACK 0x02 (identifier rejected) when the client id does not match the certificate, or
  is held by a session of another identity; 0x05 (not authorized) for a certificate unknown
  to the registry or revoked, a suspended or revoked device, or a will outside the publish
  policy; 0x03 when the registry is unreachable, and while the watcher has not confirmed
  revocation state for ``revocation_max_staleness`` (fail closed; connected clients stay);
  0x01 for MQTT 3.1 and 5.
- The watcher never stops: a failed poll is logged, counted and retried with backoff, and an
  event whose handling raised is applied again, not skipped. ``/metrics`` (Prometheus) and
  ``/healthz`` (503 while revocation state is stale) listen on ``metrics_port`` (health.py).
- A service's client id is its name, or its name followed by one of ``-_.:/@`` and more.
- A PUBLISH outside the identity's topics is dropped and audited; the client stays connected
  (as with Mosquitto: MQTT 3.1.1 cannot tell it why, and a disconnect would only start a
  reconnect loop). A PUBLISH to an invalid topic name closes the connection.
- Quotas per device (fleet.broker.quotas, all in ``[broker]`` settings), each refusal
  episode audited once as ``broker.quota``: a packet above ``max_packet_bytes`` closes the
  connection; a client whose queue budget (``max_queued_messages`` / ``max_queued_bytes``:
  deliveries not yet flushed or acknowledged, its offline queue and its unreleased inbound
  QoS 2 messages) is full loses new messages, without being disconnected; an inbound QoS 2
  message not released within ``qos2_release_timeout`` is discarded (a late PUBREL still
  gets its PUBCOMP); a filter beyond ``max_subscriptions`` (or longer than 1 KiB, deeper
  than 32 levels) gets SUBACK 0x80; a retained message beyond the device's
  ``max_retained_messages`` / ``max_retained_bytes`` is routed but not retained (replacing
  or clearing one of its own frees its place). With the defaults one device pins at most
  about 6.3 MiB (:func:`fleet.broker.quotas.pinned_bytes`).
- The broker stops reading from a client while the client does not read what it is sent.
- A certificate superseded by a renewal is admitted for ``certificates.superseded_grace``
  after it (make-before-break), and its connections are dropped when the grace ends; then
  CONNACK 0x05. A keyCompromise revocation reaches every certificate of the same key.
- Revoked or suspended identities are dropped without their will; a keep-alive timeout or an
  expired certificate publishes it, as any abnormal disconnect does.
- Revoking or suspending a device purges what it left behind, once its connections are
  gone: its stored session (subscriptions, queued messages, will) and every retained
  message it was the last to set, wills included; a resumed device starts clean. Revoking
  one certificate purges the sessions last held through it but keeps the device's retained
  messages: they belong to the device, which may be active with another certificate (after
  a rekey, revoking the old one must not wipe its state). One ``broker.purge`` audit event
  per revocation event, with counts.
- A persistent session whose client stays away for ``session_expiry`` (7 days by default)
  is discarded with its subscriptions, queued and unreleased messages, like Mosquitto's
  ``persistent_client_expiration``: no client id is held for ever. A clean session is
  discarded as soon as its connection ends.
- Persistent sessions and retained messages survive a restart: saved to
  ``<data_dir>/broker/state.json`` every ``persistence_interval`` and at shutdown, read back
  at start within today's quotas, and purged there for identities revoked or suspended
  meanwhile (fleet.broker.persistence); a crash loses at most one interval.
- QoS 1 and 2 deliveries to a persistent session survive its connection: an unacknowledged
  PUBLISH is resent with DUP set and a PUBREL without PUBCOMP is resent on resume, before
  anything new (MQTT-4.4.0-1); nothing reaches a client before its CONNACK.
"""
