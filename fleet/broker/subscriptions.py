"""The broker's subscriptions: topic filter -> subscribed sessions, indexed by topic level.

amqtt 0.12.1 keeps ``{filter: [(session, qos), ...]}`` and pays for it with the number of
sessions: a SUBSCRIBE scans the filter's whole list for a duplicate (and logs ``repr`` of the
whole table), routing a message tests the topic against every filter. Here each filter keeps
its subscribers by client id (a repeated SUBSCRIBE replaces the subscription and its QoS,
MQTT-3.8.4-3), and the filters sit in a tree of topic levels, so finding the filters that
match a topic costs the depth of the topic, not the number of filters. Found filter sets are
cached per topic (topics of at most 256 characters) until the set of filters changes.

The table is a read-only mapping for amqtt and its plugins (iteration, ``in``, ``[]``,
``items()``); changes go through :meth:`SubscriptionTable.subscribe`,
:meth:`SubscriptionTable.unsubscribe` and :meth:`SubscriptionTable.clear`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from fleet.broker.quotas import CACHED_TOPIC_LENGTH

S = TypeVar("S")

MATCH_CACHE = 50_000
"""Topics whose matching filters are remembered; the cache is emptied when it is full."""


class Subscribers(Generic[S]):
    """The sessions subscribed to one topic filter, in subscription order, by client id."""

    __slots__ = ("_by_client",)

    def __init__(self) -> None:
        self._by_client: dict[str, tuple[S, int]] = {}

    def __iter__(self) -> Iterator[tuple[S, int]]:
        return iter(self._by_client.values())

    def __len__(self) -> int:
        return len(self._by_client)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._by_client

    def granted(self, client_id: str) -> int | None:
        """The QoS granted to *client_id*'s subscription (None: it has none)."""
        held = self._by_client.get(client_id)
        return None if held is None else held[1]

    def __repr__(self) -> str:
        return f"<Subscribers: {len(self)}>"


class _Level:
    """One node of the filter tree: the levels below it and the filter that ends here."""

    __slots__ = ("children", "topic_filter")

    def __init__(self) -> None:
        self.children: dict[str, _Level] = {}
        self.topic_filter: str | None = None


class SubscriptionTable(Mapping[str, Subscribers[S]]):
    """Topic filter -> :class:`Subscribers`, with matching by walking the filter tree.

    Filters must be valid (``fleet.acl.is_topic_filter``); the table does not check them.
    """

    def __init__(self) -> None:
        self._filters: dict[str, Subscribers[S]] = {}
        self._root = _Level()
        self._matching: dict[str, tuple[str, ...]] = {}

    # -- the mapping amqtt reads ---------------------------------------------------------

    def __getitem__(self, topic_filter: str) -> Subscribers[S]:
        return self._filters[topic_filter]

    def __iter__(self) -> Iterator[str]:
        return iter(self._filters)

    def __len__(self) -> int:
        return len(self._filters)

    def __contains__(self, topic_filter: object) -> bool:
        return topic_filter in self._filters

    def __repr__(self) -> str:
        # amqtt logs repr() of its table on every SUBSCRIBE, at any log level.
        return f"<SubscriptionTable: {len(self._filters)} filters>"

    # -- changes -------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, client_id: str, session: S, qos: int) -> None:
        """Add or replace *client_id*'s subscription to *topic_filter*."""
        subscribers = self._filters.get(topic_filter)
        if subscribers is None:
            subscribers = self._filters[topic_filter] = Subscribers()
            node = self._root
            for level in topic_filter.split("/"):
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Level()
                node = child
            node.topic_filter = topic_filter
            self._matching.clear()
        subscribers._by_client[client_id] = (session, qos)

    def unsubscribe(self, topic_filter: str, client_id: str) -> bool:
        """Remove *client_id*'s subscription to *topic_filter*; False if it had none."""
        subscribers = self._filters.get(topic_filter)
        if subscribers is None or subscribers._by_client.pop(client_id, None) is None:
            return False
        if not subscribers:
            del self._filters[topic_filter]
            self._prune(topic_filter.split("/"))
            self._matching.clear()
        return True

    def clear(self) -> None:
        self._filters.clear()
        self._root = _Level()
        self._matching.clear()

    def _prune(self, levels: list[str]) -> None:
        path = [self._root]
        for level in levels:
            path.append(path[-1].children[level])
        path[-1].topic_filter = None
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.children or node.topic_filter is not None:
                break
            del path[depth - 1].children[levels[depth - 1]]

    # -- matching ------------------------------------------------------------------------

    def matching(self, topic: str) -> tuple[str, ...]:
        """The filters that match the topic name *topic* (MQTT 3.1.1 4.7)."""
        found = self._matching.get(topic)
        if found is None:
            found = self._walk(topic.split("/"))
            if len(topic) <= CACHED_TOPIC_LENGTH:
                if len(self._matching) >= MATCH_CACHE:
                    self._matching.clear()
                self._matching[topic] = found
        return found

    def _walk(self, levels: list[str]) -> tuple[str, ...]:
        found: list[str] = []
        count = len(levels)
        # 4.7.2: filters starting with a wildcard do not match topics starting with "$".
        wildcards_at_root = levels[0][:1] != "$"
        stack = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            children = node.children
            if depth == count:
                if node.topic_filter is not None:
                    found.append(node.topic_filter)
                rest = children.get("#")  # "a/#" matches "a" as well (4.7.1.2)
                if rest is not None and rest.topic_filter is not None:
                    found.append(rest.topic_filter)
                continue
            if depth or wildcards_at_root:
                rest = children.get("#")
                if rest is not None and rest.topic_filter is not None:
                    found.append(rest.topic_filter)
                one = children.get("+")
                if one is not None:
                    stack.append((one, depth + 1))
            exact = children.get(levels[depth])
            if exact is not None:
                stack.append((exact, depth + 1))
        return tuple(found)
