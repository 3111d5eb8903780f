"""S3: retained messages go only to sessions that subscribed and may receive them.

Stock amqtt sent, on every CONNECT, the retained messages matching ANY session's filters, so
a device received another device's retained command without subscribing at all.
"""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Enroll
from .helpers import Client, Credentials


def test_s3_retained_message_of_other_device_not_delivered(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    backend = connect(issue_service("control"))
    backend.publish("devices/d2/commands/config", b"d2-secret", qos=1, retain=True)
    d2 = connect(enroll("d2"))
    assert d2.subscribe("devices/d2/commands/#") == [1]
    retained = d2.receive()
    assert retained is not None
    assert (retained.payload, retained.retain) == (b"d2-secret", True)

    d1 = connect(enroll("d1"))  # stock amqtt delivered d2's retained message here
    assert d1.receive(timeout=0.5) is None
    assert d1.subscribe("devices/d1/commands/#") == [1]
    assert d1.receive(timeout=0.5) is None


def test_s3_retained_delivered_after_own_subscription(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    backend = connect(issue_service("control"))
    backend.publish("groups/g1/broadcast/firmware", b"v2", qos=1, retain=True)
    backend.publish("groups/g2/broadcast/firmware", b"other", qos=1, retain=True)
    d1 = connect(enroll("d1", group="g1"))
    assert d1.subscribe("groups/g1/broadcast/#") == [1]
    message = d1.receive()
    assert message is not None
    assert message.payload == b"v2"
    assert d1.receive(timeout=0.3) is None
