"""``fleet group``: groups are declared before tokens name them; typos are refused."""

from __future__ import annotations

from fleet.cli.app import EXIT_NOT_FOUND, EXIT_REFUSED

from .helpers import Enroll, Run

GROUP_KEYS = {"name", "description", "created_at", "created_by", "devices", "live_tokens"}


def test_group_create_list_show_delete(fleet: Run, enroll: Enroll) -> None:
    assert fleet.ok("group", "create", "pumps").stdout == "declared group pumps\n"
    created = fleet.json("group", "create", "cameras", "--description", "line 2 cameras")
    assert set(created) == GROUP_KEYS
    assert (created["name"], created["description"]) == ("cameras", "line 2 cameras")
    assert created["created_by"].startswith("operator:")
    enroll("dev-1", "pumps")
    fleet.ok("token", "create", "--group", "pumps", "--count", "2")
    listed = fleet.json("group", "list")
    assert [(g["name"], g["devices"], g["live_tokens"]) for g in listed] == [
        ("cameras", {}, 0), ("pumps", {"active": 1}, 2)]
    shown = fleet.json("group", "show", "pumps")
    assert shown == listed[1]
    human = fleet.ok("group", "show", "pumps").stdout
    assert "1 active" in human
    assert "pumps" in fleet.ok("group", "list").stdout
    assert fleet.ok("group", "delete", "cameras").stdout == "deleted group cameras\n"
    assert [g["name"] for g in fleet.json("group", "list")] == ["pumps"]
    actions = [e["action"] for e in fleet.json("audit", "--action", "group")]
    assert actions == ["group.create", "group.create", "group.delete"]


def test_group_create_refused_twice(fleet: Run) -> None:
    fleet.ok("group", "create", "pumps")
    result = fleet("group", "create", "pumps")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr == "error: group pumps is already declared\n"


def test_group_create_refused_invalid_name(fleet: Run) -> None:
    result = fleet("group", "create", "no/slashes")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: invalid group 'no/slashes'")
    assert fleet.json("group", "list") == []


def test_group_delete_refused_while_in_use(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1", "pumps")
    result = fleet("group", "delete", "pumps")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: group pumps is not empty: 1 active device(s);")
    assert [g["name"] for g in fleet.json("group", "list")] == ["pumps"]


def test_token_create_refused_undeclared_group_lists_the_declared(fleet: Run) -> None:
    fleet.ok("group", "create", "sensors")
    fleet.ok("group", "create", "pumps")
    result = fleet("token", "create", "--group", "sensrs")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown group 'sensrs'; declared groups: pumps, sensors\n"
    assert fleet.json("token", "list") == []


def test_pre_registering_a_device_refused_in_an_undeclared_group(fleet: Run) -> None:
    result = fleet("token", "create", "--group", "pumps", "--device", "dev-1")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "unknown group 'pumps'" in result.stderr
    assert fleet("device", "show", "dev-1").exit_code == EXIT_NOT_FOUND


def test_list_filters_refuse_an_undeclared_group(fleet: Run) -> None:
    fleet.ok("group", "create", "sensors")
    for noun in ("device", "token"):
        result = fleet(noun, "list", "--group", "sensrs")
        assert result.exit_code == EXIT_NOT_FOUND, noun
        assert result.stderr == "error: unknown group 'sensrs'; declared groups: sensors\n"
    assert fleet.json("device", "list", "--group", "sensors") == []


def test_group_show_and_delete_refused_unknown(fleet: Run) -> None:
    for command in ("show", "delete"):
        result = fleet("group", command, "ghost")
        assert result.exit_code == EXIT_NOT_FOUND
        assert result.stderr == ("error: unknown group 'ghost'; no group is declared yet: "
                                 "fleet group create NAME\n")
