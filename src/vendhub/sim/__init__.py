"""Simulated vending machines that follow protocol.md's device obligations."""

from vendhub.sim.device import DeviceLogic, FlashStore, StoredResult
from vendhub.sim.fleet import build_fleet, run_fleet
from vendhub.sim.machine import SimulatedMachine
from vendhub.sim.options import Faults, SimOptions
from vendhub.sim.stats import FleetStats

__all__ = [
    "DeviceLogic",
    "Faults",
    "FlashStore",
    "FleetStats",
    "SimOptions",
    "SimulatedMachine",
    "StoredResult",
    "build_fleet",
    "run_fleet",
]
