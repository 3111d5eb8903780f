"""Fixtures: a real EST service on 127.0.0.1 (TLS, fleet CA, SQLite or PostgreSQL)."""

from __future__ import annotations

import pytest
from est_support import Est, EstFactory, make_est

__all__ = ["est", "est_any_db", "make_est"]


@pytest.fixture
def est(make_est: EstFactory) -> Est:
    """The service on SQLite."""
    return make_est()


@pytest.fixture
def est_any_db(make_est: EstFactory, database_url: str) -> Est:
    """The service on SQLite and on PostgreSQL."""
    return make_est(database_url)
