"""Sales summary for operators, from the money ledger: money in, money back, what sold, failed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from vendhub.adapters.db.tables import dispenses, order_items, orders, payment_receipts, refunds
from vendhub.domain.model import RefundStatus, UnitStatus, refund_owed
from vendhub.services.context import ServiceContext

IN_PLAY = (UnitStatus.QUEUED.value, UnitStatus.IN_FLIGHT.value)


def _sales(machine_id: str | None, start: datetime | None, end: datetime | None) -> sa.Subquery:
    """Orders first paid in [start, end): the period a sale belongs to, with all its money."""
    first_paid = sa.func.min(payment_receipts.c.received_at)
    stmt = (
        sa.select(payment_receipts.c.order_id.label("order_id"))
        .join(orders, orders.c.id == payment_receipts.c.order_id)
        .group_by(payment_receipts.c.order_id)
    )
    if machine_id:
        stmt = stmt.where(orders.c.machine_id == machine_id)
    if start is not None:
        stmt = stmt.having(first_paid >= start)
    if end is not None:
        stmt = stmt.having(first_paid < end)
    return stmt.subquery("sales")


def _sum(column: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(column), 0)


async def summary(
    ctx: ServiceContext, machine_id: str | None, start: datetime | None, end: datetime | None
) -> dict[str, Any]:
    sales = _sales(machine_id, start, end)
    paid = (
        sa.select(payment_receipts.c.order_id, _sum(payment_receipts.c.amount))
        .join(sales, sales.c.order_id == payment_receipts.c.order_id)
        .group_by(payment_receipts.c.order_id)
    )
    price = dispenses.c.unit_price
    units = (
        sa.select(
            dispenses.c.order_id,
            _sum(sa.case((dispenses.c.status == UnitStatus.DROPPED.value, price), else_=0)),
            _sum(sa.case((dispenses.c.status.in_(IN_PLAY), price), else_=0)),
            _sum(sa.case((dispenses.c.status == UnitStatus.DROPPED.value, 1), else_=0)),
            _sum(sa.case((dispenses.c.status == UnitStatus.FAILED.value, 1), else_=0)),
        )
        .join(sales, sales.c.order_id == dispenses.c.order_id)
        .group_by(dispenses.c.order_id)
    )
    money_back = (
        sa.select(
            refunds.c.order_id,
            _sum(
                sa.case(
                    (refunds.c.status == RefundStatus.SUCCEEDED.value, refunds.c.amount), else_=0
                )
            ),
            _sum(sa.case((refunds.c.status == RefundStatus.HELD.value, refunds.c.amount), else_=0)),
        )
        .join(sales, sales.c.order_id == refunds.c.order_id)
        .group_by(refunds.c.order_id)
    )
    by_product = (
        sa.select(
            order_items.c.product_id,
            sa.func.max(order_items.c.product_name),
            sa.func.count(dispenses.c.id),
            _sum(dispenses.c.unit_price),
        )
        .select_from(dispenses)
        .join(sales, sales.c.order_id == dispenses.c.order_id)
        .join(order_items, order_items.c.id == dispenses.c.order_item_id)
        .where(dispenses.c.status == UnitStatus.DROPPED.value)
        .group_by(order_items.c.product_id)
        .order_by(order_items.c.product_id)
    )
    async with ctx.engine.connect() as conn:
        paid_by = {o: int(p) for o, p in (await conn.execute(paid)).all()}
        units_by = {r[0]: [int(v) for v in r[1:]] for r in (await conn.execute(units)).all()}
        back_by = {r[0]: [int(v) for v in r[1:]] for r in (await conn.execute(money_back)).all()}
        products = (await conn.execute(by_product)).all()
    gross = refunded = pending = held = dropped = failed = 0
    for order_id, amount in paid_by.items():
        kept, in_play, n_dropped, n_failed = units_by.get(order_id, [0, 0, 0, 0])
        back, on_hold = back_by.get(order_id, [0, 0])
        gross += amount
        refunded += back
        held += on_hold
        pending += refund_owed(amount, kept, in_play, back)
        dropped += n_dropped
        failed += n_failed
    settled = dropped + failed
    return {
        "machine_id": machine_id,
        "from": start,
        "to": end,
        "orders_paid": len(paid_by),
        "gross_paid": gross,
        "refunded": refunded,
        "refund_pending": pending,
        "refund_held": held,
        "net": gross - refunded,
        "units_dropped": dropped,
        "units_failed": failed,
        "failed_vend_rate": round(failed / settled, 4) if settled else 0.0,
        "products": [
            {"product_id": p, "product_name": n, "units_sold": int(c), "revenue": int(r)}
            for p, n, c, r in products
        ],
    }
