"""Payment background loop: reconcile silent orders, close expired ones at the gateway, refund."""

from __future__ import annotations

import asyncio
import logging

from vendhub.services import reconcile, refunds
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.services.passes import isolated
from vendhub.services.ports import PaymentProvider

log = logging.getLogger(__name__)


async def run_payment_jobs(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, tick_s: float
) -> None:
    while True:
        try:
            await tick(ctx, provider, policy)
        except Exception:
            log.exception("payment jobs pass failed; will retry")
        await asyncio.sleep(tick_s)


async def tick(ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy) -> None:
    """One pass; each step commits per order and isolates its rows, and a step that fails
    as a whole (its scan) is counted without keeping the later steps from running."""
    reconciled = await isolated(
        ctx, "reconcile", "whole pass", lambda: reconcile.reconcile_pending(ctx, provider, policy)
    )
    closed = await isolated(
        ctx,
        "gateway_close",
        "whole pass",
        lambda: reconcile.close_at_gateway_due(ctx, provider, policy),
    )
    refunded = await isolated(
        ctx, "refunds", "whole pass", lambda: refunds.execute_due_refunds(ctx, provider, policy)
    )
    if reconciled or closed or refunded:
        log.info(
            "payment jobs: reconciled=%s closed_at_gateway=%s refunds_paid=%s",
            len(reconciled or {}),
            closed or 0,
            refunded or 0,
        )
