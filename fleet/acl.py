"""Topic policy and MQTT 3.1.1 topic matching, filter validation and filter containment.

The policy (``config/acl.toml``) holds, per role (``device``, ``service``), the topic filters
a client may publish to and subscribe to, written as templates over ``{device_id}`` and
``{group}``. Everything not granted is denied. A SUBSCRIBE filter is granted only if every
topic it can match is matched by a granted filter (containment, not string equality), so
``devices/+/commands/#`` is refused to a device that may read ``devices/d1/commands/#``.

Pure: no I/O except :func:`load_policy`, and nothing from the rest of Fleet.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROLES = ("device", "service")
ACTIONS = ("publish", "subscribe")
PLACEHOLDERS = frozenset({"device_id", "group"})
MAX_TOPIC_BYTES = 65535
"""MQTT 3.1.1 4.7.3: topic names and filters are UTF-8 strings of at most 65535 bytes."""


class PolicyError(ValueError):
    """The topic policy cannot be used; the message names the file, role and template."""


# -- topic names and filters (MQTT 3.1.1 section 4.7) --------------------------------------


def _valid_utf8_text(text: str) -> bool:
    if not text or "\x00" in text:
        return False
    try:
        return len(text.encode("utf-8")) <= MAX_TOPIC_BYTES
    except UnicodeEncodeError:  # lone surrogates
        return False


def is_topic_name(topic: str) -> bool:
    """A topic name a client may PUBLISH to: non-empty, no NUL, no wildcard (4.7.3, 3.3.2-2)."""
    return isinstance(topic, str) and _valid_utf8_text(topic) and not any(
        c in topic for c in "+#")


def is_topic_filter(topic_filter: str) -> bool:
    """A SUBSCRIBE filter: ``+`` fills a whole level, ``#`` is a whole last level (4.7.1)."""
    if not isinstance(topic_filter, str) or not _valid_utf8_text(topic_filter):
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def matches(topic: str, topic_filter: str) -> bool:
    """Does *topic_filter* match *topic*? Both must be valid; ``$`` topics need a literal start."""
    return _match_levels(topic.split("/"), topic_filter.split("/"))


def _match_levels(topic: Sequence[str], pattern: Sequence[str]) -> bool:
    # 4.7.2: a filter starting with a wildcard does not match a topic starting with "$".
    if topic[0][:1] == "$" and pattern[0] in ("+", "#"):
        return False
    count = len(topic)
    for index, level in enumerate(pattern):
        if level == "#":
            return True  # matches the parent level and everything below it (4.7.1.2)
        if index >= count or (level != "+" and level != topic[index]):
            return False
    return len(pattern) == count


def uncovered_topic(topic_filter: str, allowed: Iterable[str]) -> str | None:
    """A topic that *topic_filter* matches but no filter in *allowed* does, or None.

    None means containment holds: every topic the filter can match is allowed. The search
    tries, at each ``+`` or ``#`` level, every literal the allowed filters name at that depth
    plus one fresh value standing for all the others, so it is exact and terminates.
    """
    patterns = [a.split("/") for a in allowed if is_topic_filter(a)]
    found = _uncovered(topic_filter.split("/"), patterns, [])
    return None if found is None else "/".join(found)


def _is_topic(levels: Sequence[str]) -> bool:
    return bool(levels) and levels != [""]


def _uncovered(rest: list[str], patterns: list[list[str]], prefix: list[str]) -> list[str] | None:
    if prefix and ["#"] in patterns:
        return None  # a remaining "#" matches every continuation, including none
    if not patterns:
        return _instance(rest, prefix)
    if not rest:  # the topic ends here
        if not _is_topic(prefix) or any(p in ([], ["#"]) for p in patterns):
            return None
        return prefix
    head = rest[0]
    if head == "#":
        found = _uncovered([], patterns, prefix)
        return found if found is not None else _uncovered(["+", "#"], patterns, prefix)
    if head != "+":
        return _uncovered(rest[1:], _advance(patterns, head, len(prefix)), [*prefix, head])
    literals = {p[0] for p in patterns if p and p[0] not in ("+", "#")}
    if not prefix:  # "+" in the first level never matches a "$" topic
        literals = {value for value in literals if not value.startswith("$")}
    for value in (*sorted(literals), _fresh(literals)):
        found = _uncovered(rest[1:], _advance(patterns, value, len(prefix)), [*prefix, value])
        if found is not None:
            return found
    return None


def _advance(patterns: list[list[str]], level: str, depth: int) -> list[list[str]]:
    """The remainders of *patterns* after they consumed *level*."""
    dollar = depth == 0 and level.startswith("$")
    remaining = []
    for pattern in patterns:
        if not pattern:
            continue
        head = pattern[0]
        if head == "#":
            if not dollar:
                remaining.append(pattern)
        elif (head == "+" and not dollar) or head == level:
            remaining.append(pattern[1:])
    return remaining


def _fresh(taken: set[str]) -> str:
    value, n = "x", 0
    while value in taken:
        value, n = f"x{n}", n + 1
    return value


def _instance(rest: list[str], prefix: list[str]) -> list[str] | None:
    """Some topic the filter remainder *rest* matches after *prefix*."""
    levels = [*prefix, *("x" if level == "+" else level for level in rest if level != "#")]
    if not _is_topic(levels):
        if not rest or rest[-1] != "#":
            return None
        levels.append("x")
    return levels


# -- the policy --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grants:
    """What one identity may do, as concrete topic filters (templates already filled in)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    no_dollar: bool = True

    def may_publish(self, topic: str) -> bool:
        if not is_topic_name(topic) or (self.no_dollar and topic.startswith("$")):
            return False
        levels = topic.split("/")
        return any(_match_levels(levels, f.split("/")) for f in self.publish)

    def may_subscribe(self, topic_filter: str) -> bool:
        if not is_topic_filter(topic_filter):
            return False
        if self.no_dollar and topic_filter.startswith("$"):
            return False
        return uncovered_topic(topic_filter, self.subscribe) is None

    def may_receive(self, topic: str) -> bool:
        """May a message on *topic* be delivered to this identity (incl. retained messages)?"""
        if self.no_dollar and topic.startswith("$"):
            return False
        levels = topic.split("/")
        return any(_match_levels(levels, f.split("/")) for f in self.subscribe)


NOTHING = Grants(publish=(), subscribe=())


@dataclass(frozen=True, slots=True)
class Rules:
    """The templates of one role."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """Topic templates per role; a role not listed is granted nothing."""

    roles: Mapping[str, Rules]

    def grants(self, *, role: str, device_id: str | None = None,
               group: str | None = None) -> Grants:
        """The filters *role* may use with the placeholders filled in.

        A template naming a placeholder with no (or an unsafe) value is left out, so a
        value can never widen what is granted.
        """
        rules = self.roles.get(role)
        if rules is None:
            return NOTHING
        values = {"device_id": device_id, "group": group}
        return Grants(publish=_fill_all(rules.publish, values),
                      subscribe=_fill_all(rules.subscribe, values),
                      no_dollar=role == "device")


def _safe_value(value: str | None) -> bool:
    """A value fills exactly one level and can neither add a wildcard nor start a $ topic."""
    return (value is not None and value != "" and not value.startswith("$")
            and not any(c in value for c in "+#/\x00"))


def _fill_all(templates: tuple[str, ...], values: Mapping[str, str | None]) -> tuple[str, ...]:
    filled = []
    for template in templates:
        names = _placeholders(template)
        if all(_safe_value(values[name]) for name in names):
            result = template.format_map(values) if names else template
            if is_topic_filter(result):
                filled.append(result)
    return tuple(filled)


def _placeholders(template: str) -> set[str]:
    """The placeholder names in *template*; raises ValueError on anything but ``{name}``."""
    names = set()
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} may not carry a format or conversion")
        if field not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{field}}}; use {{device_id}} or {{group}}")
        names.add(field)
    return names


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and validate a TOML topic policy; raises PolicyError naming what is wrong."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    roles: dict[str, Rules] = {}
    for role, table in document.items():
        if role not in ROLES:
            raise PolicyError(f"{source}: unknown role [{role}]; roles are {', '.join(ROLES)}")
        if not isinstance(table, dict):
            raise PolicyError(f"{source}: [{role}] must be a table")
        for key in table:
            if key not in ACTIONS:
                raise PolicyError(f"{source}: [{role}] {key}: unknown key; use publish, subscribe")
        lists = {}
        for action in ACTIONS:
            templates = table.get(action, [])
            if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
                raise PolicyError(f"{source}: [{role}] {action} must be a list of strings")
            for template in templates:
                _check_template(template, role=role, where=f"{source}: [{role}] {action}")
            lists[action] = tuple(templates)
        roles[role] = Rules(publish=lists["publish"], subscribe=lists["subscribe"])
    return Policy(roles=roles)


def _check_template(template: str, *, role: str, where: str) -> None:
    try:
        names = _placeholders(template)
    except ValueError as exc:
        raise PolicyError(f"{where}: {template!r}: {exc}") from None
    sample = template.format_map(dict.fromkeys(names, "v")) if names else template
    if not is_topic_filter(sample):
        raise PolicyError(f"{where}: {template!r} is not a valid MQTT topic filter")
    if role == "device" and sample.startswith("$"):
        raise PolicyError(f"{where}: {template!r}: $ topics are never granted to devices")


def load_policy(path: Path) -> Policy:
    """Read the policy file (``settings.acl_file``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the topic policy: {exc.strerror}") from None
    return parse_policy(text, source=str(path))
