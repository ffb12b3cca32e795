"""Periodic jobs: expire unpaid orders, retransmit silent commands, give up on dead ones."""

from __future__ import annotations

import asyncio
import logging

from vendhub.metrics import Metrics
from vendhub.services import commands, fleet, orders
from vendhub.services.context import ServiceContext

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
    expired = await orders.expire_due_orders(ctx)
    for order_id in expired:
        log.info("order %s expired unpaid; stock released", order_id)
    metrics.retransmissions.inc(await commands.retransmit_due(ctx))
    metrics.gave_up.inc(await commands.give_up_due(ctx))
    await fleet.mark_silent_machines_offline(ctx)
