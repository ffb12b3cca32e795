"""Paying back what is owed: every refund row executed through the gateway once, retried."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.tables import dispenses, machine_events, orders, payments, refunds
from vendhub.domain.model import OrderStatus, UnitStatus
from vendhub.domain.payments import PaymentStatus
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.services.dispatch import lock_order, set_order_status
from vendhub.services.errors import Conflict, NotFound
from vendhub.services.ids import new_id
from vendhub.services.passes import isolated
from vendhub.services.ports import GatewayError, PaymentProvider, RefundRequest

log = logging.getLogger(__name__)

PENDING = "PENDING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
STILL_DISPENSING = (OrderStatus.PAID, OrderStatus.PENDING_DISPENSE, OrderStatus.DISPENSING)


async def execute_due_refunds(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, limit: int = 20
) -> int:
    """Try every refund whose time has come; returns how many succeeded."""
    async with ctx.engine.connect() as conn:
        due = (
            await conn.scalars(
                sa.select(refunds.c.id)
                .where(refunds.c.status == PENDING, _due(ctx.clock()))
                .order_by(refunds.c.next_attempt_at, refunds.c.id)
                .limit(limit)
            )
        ).all()
    done = 0
    for refund_id in due:
        done += bool(
            await isolated(
                ctx,
                "refunds",
                f"refund {refund_id}",
                partial(execute_refund, ctx, provider, policy, refund_id),
            )
        )
    return done


async def execute_refund(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, refund_id: str
) -> bool:
    row = await _claim(ctx, policy, refund_id)
    if row is None:
        return False  # not due, or another worker holds it
    request = RefundRequest(
        order_id=row["order_id"],
        refund_key=row["refund_key"],
        amount=row["amount"],
        reason=f"vendhub: {row['reason']}"[:255],
    )
    try:
        result = await provider.refund(request)
    except GatewayError as exc:
        await _record_failure(ctx, policy, row, exc)
        return False
    async with ctx.engine.begin() as conn:
        await mark_succeeded(ctx, conn, row["id"], result.provider_ref)
    log.info(
        "refund order=%s key=%s amount=%s succeeded",
        row["order_id"],
        row["refund_key"],
        row["amount"],
    )
    return True


def _due(now: datetime) -> sa.ColumnElement[bool]:
    # A row written without a next attempt time (by any code path) is due at once.
    return sa.or_(refunds.c.next_attempt_at.is_(None), refunds.c.next_attempt_at <= now)


async def _claim(ctx: ServiceContext, policy: PaymentPolicy, refund_id: str) -> RowMapping | None:
    """Take the row for one attempt: a conditional update only one worker can win."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        won = await conn.execute(
            sa.update(refunds)
            .where(
                refunds.c.id == refund_id,
                refunds.c.status == PENDING,
                _due(now),
            )
            .values(
                attempts=refunds.c.attempts + 1,
                next_attempt_at=now + timedelta(seconds=policy.lease_s),
                updated_at=now,
            )
        )
        if won.rowcount != 1:
            return None
        return (
            (await conn.execute(sa.select(refunds).where(refunds.c.id == refund_id)))
            .mappings()
            .one()
        )


async def _record_failure(
    ctx: ServiceContext, policy: PaymentPolicy, row: RowMapping, exc: GatewayError
) -> None:
    now = ctx.clock()
    attempts = int(row["attempts"])
    # Timeouts and 5xx may hide a refund that happened; the same refund_key makes the
    # retry safe, so those are retried for as long as it takes. Refusals are bounded.
    give_up = not exc.retryable and attempts >= policy.refund_max_attempts
    log.warning(
        "refund order=%s key=%s attempt=%s failed (%s): %s",
        row["order_id"],
        row["refund_key"],
        attempts,
        "giving up" if give_up else "will retry",
        exc,
    )
    values: dict[str, Any] = {"last_error": str(exc)[:1000], "updated_at": now}
    if give_up:
        values.update(status=FAILED, next_attempt_at=None)
    else:
        values["next_attempt_at"] = now + timedelta(seconds=policy.backoff(attempts))
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == row["id"], refunds.c.status == PENDING)
            .values(**values)
        )
        if give_up:
            await _alert_refund_failed(ctx, conn, row, str(exc))


async def _alert_refund_failed(
    ctx: ServiceContext, conn: AsyncConnection, row: RowMapping, error: str
) -> None:
    machine_id = await conn.scalar(
        sa.select(orders.c.machine_id).where(orders.c.id == row["order_id"])
    )
    await conn.execute(
        sa.insert(machine_events).values(
            machine_id=machine_id or "-",
            event_type="REFUND_FAILED",
            severity="critical",
            message=(
                f"refund {row['refund_key']} of Rp {row['amount']} for order {row['order_id']} "
                f"was refused by the gateway; pay it back by hand ({error[:200]})"
            ),
            details={
                "order_id": row["order_id"],
                "refund_key": row["refund_key"],
                "amount": row["amount"],
            },
            created_at=ctx.clock(),
        )
    )


async def mark_succeeded(
    ctx: ServiceContext, conn: AsyncConnection, refund_id: str, provider_ref: str | None
) -> bool:
    """Book a refund as paid out, once; a fully refunded FAILED order becomes REFUNDED."""
    row = (await conn.execute(sa.select(refunds).where(refunds.c.id == refund_id))).mappings().one()
    # The order is locked first, as everywhere else, so refund and dispense paths agree.
    order = await lock_order(conn, row["order_id"])
    if order is None:
        raise NotFound(f"order {row['order_id']} not found")
    now = ctx.clock()
    changed = await conn.execute(
        sa.update(refunds)
        .where(refunds.c.id == refund_id, refunds.c.status != SUCCEEDED)
        .values(
            status=SUCCEEDED,
            provider_ref=(provider_ref or "")[:64] or None,
            completed_at=now,
            next_attempt_at=None,
            updated_at=now,
        )
    )
    if changed.rowcount != 1:
        return False
    refunded = int(order["refunded_amount"]) + int(row["amount"])
    paid = await conn.scalar(
        sa.select(payments.c.amount).where(
            payments.c.order_id == order["id"], payments.c.paid_at.is_not(None)
        )
    )
    if order["status"] == OrderStatus.FAILED.value and paid is not None and refunded >= paid:
        await set_order_status(conn, order, OrderStatus.REFUNDED, now, refunded_amount=refunded)
    else:
        await conn.execute(
            sa.update(orders)
            .where(orders.c.id == order["id"])
            .values(refunded_amount=refunded, updated_at=now)
        )
    if paid is not None and refunded >= paid:
        await conn.execute(
            sa.update(payments)
            .where(payments.c.order_id == order["id"])
            .values(status=PaymentStatus.REFUNDED.value, updated_at=now)
        )
    return True


async def confirm_by_keys(
    ctx: ServiceContext,
    conn: AsyncConnection,
    order_id: str,
    keys: Sequence[str],
    provider_ref: str | None,
) -> bool:
    """A gateway refund notification naming our refund_keys settles those rows."""
    if not keys:
        return False
    ids = (
        await conn.scalars(
            sa.select(refunds.c.id).where(
                refunds.c.order_id == order_id,
                refunds.c.refund_key.in_(list(keys)),
                refunds.c.status != SUCCEEDED,
            )
        )
    ).all()
    confirmed = False
    for refund_id in ids:
        confirmed |= await mark_succeeded(ctx, conn, refund_id, provider_ref)
    return confirmed


async def request_manual_refund(
    ctx: ServiceContext, provider: PaymentProvider, policy: PaymentPolicy, order_id: str
) -> dict[str, Any]:
    """Operator's refund of whatever was paid and neither dropped nor refunded; idempotent."""
    key = f"manual-{order_id}"
    if await _by_key(ctx, key) is None:
        # A concurrent call may create it first: same key, same refund.
        with contextlib.suppress(IntegrityError):
            await _create_manual(ctx, order_id, key)
    row = await _by_key(ctx, key)
    if row is None:
        raise RuntimeError(f"manual refund {key} vanished")
    if row["status"] == PENDING:
        await execute_refund(ctx, provider, policy, row["id"])
        row = await _by_key(ctx, key) or row
    return dict(row)


async def _by_key(ctx: ServiceContext, key: str) -> RowMapping | None:
    async with ctx.engine.connect() as conn:
        stmt = sa.select(refunds).where(refunds.c.refund_key == key)
        return (await conn.execute(stmt)).mappings().first()


async def _create_manual(ctx: ServiceContext, order_id: str, key: str) -> None:
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        order = await lock_order(conn, order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        # Checked again under the order's lock: a concurrent call may have just made it.
        if await conn.scalar(sa.select(refunds.c.id).where(refunds.c.refund_key == key)):
            return
        amount = await _refundable(conn, order)
        await conn.execute(
            sa.insert(refunds).values(
                id=new_id(),
                order_id=order_id,
                dispense_id=None,
                refund_key=key,
                amount=amount,
                status=PENDING,
                reason="MANUAL",
                created_at=now,
                updated_at=now,
                next_attempt_at=now,
            )
        )
        log.info("manual refund order=%s amount=%s requested", order_id, amount)


async def _refundable(conn: AsyncConnection, order: RowMapping) -> int:
    """Paid − value of units that dropped − refunds already owed or made (not FAILED ones)."""
    order_id = order["id"]
    paid = await conn.scalar(
        sa.select(payments.c.amount).where(
            payments.c.order_id == order_id, payments.c.paid_at.is_not(None)
        )
    )
    if paid is None:
        raise Conflict(f"order {order_id} has no payment to refund")
    unsettled = await conn.scalar(
        sa.select(sa.func.count())
        .select_from(dispenses)
        .where(
            dispenses.c.order_id == order_id,
            dispenses.c.status.in_([UnitStatus.QUEUED.value, UnitStatus.IN_FLIGHT.value]),
        )
    )
    if OrderStatus(order["status"]) in STILL_DISPENSING or unsettled:
        raise Conflict(f"order {order_id} is still dispensing; refund it once it has settled")
    dropped = await conn.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(dispenses.c.unit_price), 0)).where(
            dispenses.c.order_id == order_id, dispenses.c.status == UnitStatus.DROPPED.value
        )
    )
    owed = await conn.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(refunds.c.amount), 0)).where(
            refunds.c.order_id == order_id, refunds.c.status.in_([PENDING, SUCCEEDED])
        )
    )
    amount = int(paid) - int(dropped or 0) - int(owed or 0)
    if amount <= 0:
        raise Conflict(f"order {order_id} has nothing left to refund")
    return amount
