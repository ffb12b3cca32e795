"""Run many simulated machines in one process and count what they did."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from vendhub.sim.machine import SimulatedMachine
from vendhub.sim.options import Faults, SimOptions
from vendhub.sim.stats import FleetStats

__all__ = ["Faults", "FleetStats", "SimOptions", "build_fleet", "run_fleet"]

logger = logging.getLogger(__name__)


def build_fleet(options: SimOptions, stats: FleetStats | None = None) -> list[SimulatedMachine]:
    """One SimulatedMachine per id, all counting into the same stats."""
    shared = stats if stats is not None else FleetStats()
    return [SimulatedMachine(mid, options, stats=shared) for mid in options.resolved_ids()]


async def run_fleet(
    options: SimOptions,
    stop_event: asyncio.Event | None = None,
    stats: FleetStats | None = None,
) -> FleetStats:
    """Run the fleet until duration_s elapses or stop_event is set; return its counters."""
    stats = stats if stats is not None else FleetStats()
    machines = build_fleet(options, stats)
    stop = stop_event if stop_event is not None else asyncio.Event()
    # Staggered first connections: a thousand simultaneous CONNECTs would queue in the
    # executor that aiomqtt connects from and hit the broker's accept backlog at once.
    pace = 1.0 / options.connects_per_s if options.connects_per_s > 0 else 0.0
    for index, machine in enumerate(machines):
        machine.start(delay_s=index * pace)
    logger.info("fleet of %d machines started on prefix %r", len(machines), options.prefix)
    try:
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), options.duration_s)
    finally:
        await asyncio.gather(*(machine.stop() for machine in machines))
        logger.info("fleet stopped: %s", stats.summary())
    return stats
