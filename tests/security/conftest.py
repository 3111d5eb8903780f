"""Hostile-load tests: floods on loopback, bounded in count and time (all marked slow).

The broker's and the EST service's fixtures are shared from their own test folders.
"""

import sys
from pathlib import Path

from broker.conftest import chain, enroll, issue_service, start_broker

# tests/provisioning is not a package (its name is the service's): import its support module
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "provisioning"))
from est_support import make_est

__all__ = ["chain", "enroll", "issue_service", "make_est", "start_broker"]
