"""The audit log is a hash chain that stays linear under concurrent writers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fleet.authority import Authority
from fleet.registry import session as new_session
from fleet.registry.events import verify_audit_chain


def test_audit_chain_intact_after_concurrent_operations(authority: Authority) -> None:
    def mint(i: int) -> None:
        authority.create_tokens(group=f"group-{i % 3}", actor=f"test-{i}")

    for group in range(3):
        authority.create_group(name=f"group-{group}", actor="operator")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(mint, range(40)))
    with new_session(authority.engine) as session:
        chain = verify_audit_chain(session=session)
    assert (chain.events, chain.problem, chain.last_id) == (43, None, 43)


def test_audit_chain_detects_edit(authority: Authority, engine: Engine) -> None:
    for i in range(3):
        authority.create_group(name=f"g{i}", actor=f"test-{i}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'someone-else' "
                                "WHERE id = (SELECT MAX(id) FROM audit_events)"))
    with new_session(engine) as session:
        chain = verify_audit_chain(session=session)
    assert (chain.events, chain.first_bad, chain.last_id) == (2, 3, 3)
    assert chain.problem is not None
    assert "does not match the chain" in chain.problem
