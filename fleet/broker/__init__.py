"""The mTLS MQTT broker: own TLS listener, CONNECT gate, amqtt with Fleet's plugins, and the
revocation watcher. Entry points: :func:`fleet.broker.server.start` and
:func:`fleet.broker.server.serve`."""
