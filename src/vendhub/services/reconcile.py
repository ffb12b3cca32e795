"""Catching up with the gateway: ask about silent orders, close locally closed ones there."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial

import sqlalchemy as sa

from vendhub.adapters.db.tables import orders, payments
from vendhub.domain.model import DomainError, OrderStatus
from vendhub.domain.payments import PaymentStatus
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.services.errors import NotFound
from vendhub.services.passes import isolated
from vendhub.services.payments import Outcome, apply_notification
from vendhub.services.ports import GatewayError, InvalidNotification, PaymentProvider

log = logging.getLogger(__name__)

CLOSED = (OrderStatus.EXPIRED.value, OrderStatus.CANCELLED.value)
# A customer's "I paid" asks the gateway at most this often per order.
VERIFY_MIN_INTERVAL_S = 5


async def reconcile_pending(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, limit: int = 50
) -> dict[str, Outcome]:
    """Orders unpaid for RECONCILE_AFTER_S: ask the gateway, apply its answer as a webhook."""
    now = ctx.clock()
    recheck = now - timedelta(seconds=policy.reconcile_every_s)
    async with ctx.engine.connect() as conn:
        due = (
            await conn.scalars(
                sa.select(orders.c.id)
                .join(payments, payments.c.order_id == orders.c.id)
                .where(
                    orders.c.status == OrderStatus.PENDING.value,
                    orders.c.created_at <= now - timedelta(seconds=policy.reconcile_after_s),
                    sa.or_(payments.c.checked_at.is_(None), payments.c.checked_at <= recheck),
                )
                .order_by(orders.c.created_at)
                .limit(limit)
            )
        ).all()
    outcomes: dict[str, Outcome] = {}
    for order_id in due:
        outcome = await isolated(
            ctx, "reconcile", f"order {order_id}", partial(_reconcile, ctx, provider, order_id)
        )
        if outcome is not None:
            outcomes[order_id] = outcome
    return outcomes


async def verify_now(ctx: ServiceContext, provider: PaymentProvider, order_id: str) -> bool:
    """Someone says the order is paid: ask the gateway (never them); True if it was asked.

    Only unpaid orders are asked about, and each at most every VERIFY_MIN_INTERVAL_S, so
    this cannot be used to hammer the gateway; the answer takes the webhook's own path.
    """
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        status = await conn.scalar(sa.select(orders.c.status).where(orders.c.id == order_id))
        if status is None:
            raise NotFound(f"order {order_id} not found")
        if status != OrderStatus.PENDING.value:
            return False
        claimed = await conn.execute(
            sa.update(payments)
            .where(
                payments.c.order_id == order_id,
                sa.or_(
                    payments.c.checked_at.is_(None),
                    payments.c.checked_at <= now - timedelta(seconds=VERIFY_MIN_INTERVAL_S),
                ),
            )
            .values(checked_at=now, check_count=payments.c.check_count + 1)
        )
    if claimed.rowcount != 1:
        return False
    await _ask_and_apply(ctx, provider, order_id)
    return True


async def _reconcile(
    ctx: ServiceContext, provider: PaymentProvider, order_id: str
) -> Outcome | None:
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(payments)
            .where(payments.c.order_id == order_id)
            .values(checked_at=ctx.clock(), check_count=payments.c.check_count + 1)
        )
    return await _ask_and_apply(ctx, provider, order_id)


async def _ask_and_apply(
    ctx: ServiceContext, provider: PaymentProvider, order_id: str
) -> Outcome | None:
    """The gateway's status for one order through the webhook's path; None if it knows none."""
    try:
        note = await provider.fetch_status(order_id)
        if note is None:
            return None
        outcome = await apply_notification(ctx, note)
    except GatewayError as exc:
        log.warning("status order=%s: gateway error, will ask again: %s", order_id, exc)
        return None
    except (InvalidNotification, DomainError) as exc:
        # An answer we refuse to apply (bad signature, wrong amount): keep asking, loudly.
        log.error("status order=%s: answer not applied: %s", order_id, exc)
        return None
    log.info("reconciled order=%s outcome=%s", order_id, outcome.value)
    return outcome


async def close_at_gateway_due(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, limit: int = 50
) -> int:
    """Orders closed here but not yet at the gateway: expire/cancel them there, retrying."""
    now = ctx.clock()
    async with ctx.engine.connect() as conn:
        due = (
            await conn.scalars(
                sa.select(payments.c.order_id)
                .join(orders, orders.c.id == payments.c.order_id)
                .where(
                    payments.c.status.in_(
                        [PaymentStatus.EXPIRED.value, PaymentStatus.FAILED.value]
                    ),
                    payments.c.gateway_closed_at.is_(None),
                    orders.c.status.in_(CLOSED),
                    sa.or_(payments.c.close_next_at.is_(None), payments.c.close_next_at <= now),
                )
                .order_by(payments.c.updated_at)
                .limit(limit)
            )
        ).all()
    closed = 0
    for order_id in due:
        closed += bool(
            await isolated(
                ctx,
                "gateway_close",
                f"order {order_id}",
                partial(close_at_gateway, ctx, provider, policy, order_id),
            )
        )
    return closed


async def close_at_gateway(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, order_id: str
) -> bool:
    status = await _claim_close(ctx, policy, order_id)
    if status is None:
        return False
    error: str | None = None
    try:
        if status == OrderStatus.EXPIRED.value:
            await provider.expire(order_id)
        else:
            await provider.cancel(order_id)
    except GatewayError as exc:
        if exc.retryable:
            await _close_failed(ctx, policy, order_id, str(exc))
            return False
        # Refused (e.g. 412: it was paid meanwhile): learn what happened and apply it, so a
        # payment that beat the expiry is refunded rather than lost.
        error = str(exc)
        log.warning("close order=%s refused: %s; asking for its status", order_id, exc)
        if await _ask_and_apply(ctx, provider, order_id) is None:
            await _close_failed(ctx, policy, order_id, error)
            return False
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(payments)
            .where(payments.c.order_id == order_id)
            .values(gateway_closed_at=now, close_error=error, close_next_at=None)
        )
    log.info("order %s closed at the gateway (%s)", order_id, status)
    return True


async def _claim_close(ctx: ServiceContext, policy: PaymentPolicy, order_id: str) -> str | None:
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        won = await conn.execute(
            sa.update(payments)
            .where(
                payments.c.order_id == order_id,
                payments.c.gateway_closed_at.is_(None),
                sa.or_(payments.c.close_next_at.is_(None), payments.c.close_next_at <= now),
            )
            .values(
                close_attempts=payments.c.close_attempts + 1,
                close_next_at=now + timedelta(seconds=policy.lease_s),
            )
        )
        if won.rowcount != 1:
            return None
        status = await conn.scalar(sa.select(orders.c.status).where(orders.c.id == order_id))
    return str(status) if status in CLOSED else None


async def _close_failed(
    ctx: ServiceContext, policy: PaymentPolicy, order_id: str, error: str
) -> None:
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        attempts = await conn.scalar(
            sa.select(payments.c.close_attempts).where(payments.c.order_id == order_id)
        )
        await conn.execute(
            sa.update(payments)
            .where(payments.c.order_id == order_id)
            .values(
                close_error=error[:1000],
                close_next_at=now + timedelta(seconds=policy.backoff(int(attempts or 1))),
            )
        )
    log.warning("close order=%s at the gateway failed, will retry: %s", order_id, error)
