"""Simulated devices at fleet scale: Fleet's demo, end-to-end test and load generator.

Devices speak only EST over HTTPS and MQTT over TLS (paho-mqtt). The simulation itself plays
factory tooling (bootstrap tokens) and operator (revocations) through Fleet's Python API.
"""

from device_sim.environment import Endpoints
from device_sim.runner import Run, RunResult
from device_sim.scenario import Misbehavior, Scenario, ScenarioError, load_scenario

__all__ = ["Endpoints", "Misbehavior", "Run", "RunResult", "Scenario", "ScenarioError",
           "load_scenario"]
