"""Periodic jobs: expire unpaid orders, retransmit silent commands, give up on dead ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from vendhub.metrics import Metrics
from vendhub.services import commands, fleet, orders
from vendhub.services.context import ServiceContext
from vendhub.services.passes import isolated

log = logging.getLogger(__name__)

TICK_S = 1.0


async def run_timers(ctx: ServiceContext, metrics: Metrics, tick_s: float = TICK_S) -> None:
    while True:
        try:
            await tick(ctx, metrics)
        except Exception:
            log.exception("timer pass failed; will retry")
        await asyncio.sleep(tick_s)


async def tick(ctx: ServiceContext, metrics: Metrics) -> None:
    """Each pass isolates its rows; a pass that fails as a whole (its scan query) is counted
    and does not keep the later passes from running."""

    async def expire() -> None:
        for order_id in await orders.expire_due_orders(ctx):
            log.info("order %s expired unpaid; stock released", order_id)

    async def retransmit() -> None:
        metrics.retransmissions.inc(await commands.retransmit_due(ctx))

    async def give_up() -> None:
        metrics.gave_up.inc(await commands.give_up_due(ctx))

    async def presence() -> None:
        await fleet.mark_silent_machines_offline(ctx)

    passes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("expire", expire),
        ("retransmit", retransmit),
        ("give_up", give_up),
        ("presence", presence),
    ]
    for name, run in passes:
        await isolated(ctx, name, "whole pass", run)
