"""Payment background loop: reconcile silent orders, close expired ones at the gateway, refund."""

from __future__ import annotations

import asyncio
import logging

from vendhub.config import Settings
from vendhub.services import reconcile, refunds
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.services.ports import PaymentProvider

log = logging.getLogger(__name__)


def policy_from(settings: Settings) -> PaymentPolicy:
    return PaymentPolicy(
        reconcile_after_s=settings.reconcile_after_s,
        reconcile_every_s=settings.reconcile_every_s,
        refund_max_attempts=settings.refund_max_attempts,
        backoff_base_s=settings.refund_backoff_s,
        backoff_max_s=settings.refund_backoff_max_s,
        # Longer than one HTTP call can take, so a live attempt is never overtaken.
        lease_s=max(60, int(settings.midtrans_timeout_s * 4)),
    )


async def run_payment_jobs(
    ctx: ServiceContext, provider: PaymentProvider, settings: Settings
) -> None:
    policy = policy_from(settings)
    try:
        while True:
            try:
                await tick(ctx, provider, policy)
            except Exception:
                log.exception("payment jobs pass failed; will retry")
            await asyncio.sleep(settings.payment_jobs_tick_s)
    finally:
        # This loop is the provider's last user; its HTTP connections close with it.
        close = getattr(provider, "aclose", None)
        if close is not None:
            await close()


async def tick(ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy) -> None:
    """One pass; each step commits per order, so a failure skips only that order."""
    reconciled = await reconcile.reconcile_pending(ctx, provider, policy)
    closed = await reconcile.close_at_gateway_due(ctx, provider, policy)
    refunded = await refunds.execute_due_refunds(ctx, provider, policy)
    if reconciled or closed or refunded:
        log.info(
            "payment jobs: reconciled=%s closed_at_gateway=%s refunds_paid=%s",
            len(reconciled),
            closed,
            refunded,
        )
