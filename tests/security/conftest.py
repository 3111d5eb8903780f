"""Hostile-load tests: floods on loopback, bounded in count and time (all marked slow)."""

from broker.conftest import chain, enroll, issue_service, start_broker

__all__ = ["chain", "enroll", "issue_service", "start_broker"]
