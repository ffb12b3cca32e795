"""Sales summary for operators, aggregated in SQL: money in, money back, what sold, what failed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from vendhub.adapters.db.tables import dispenses, order_items, orders, payments, refunds
from vendhub.domain.model import UnitStatus
from vendhub.services.context import ServiceContext

OWED = ("PENDING", "FAILED")


def _paid_in(machine_id: str | None, start: datetime | None, end: datetime | None) -> list[Any]:
    """Orders whose payment arrived in [start, end): the period a sale belongs to."""
    where: list[Any] = [payments.c.paid_at.is_not(None)]
    if start is not None:
        where.append(payments.c.paid_at >= start)
    if end is not None:
        where.append(payments.c.paid_at < end)
    if machine_id:
        where.append(orders.c.machine_id == machine_id)
    return where


async def summary(
    ctx: ServiceContext, machine_id: str | None, start: datetime | None, end: datetime | None
) -> dict[str, Any]:
    where = _paid_in(machine_id, start, end)
    paid = payments.join(orders, orders.c.id == payments.c.order_id)
    money = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(payments.c.amount), 0),
        sa.func.coalesce(sa.func.sum(orders.c.refunded_amount), 0),
    ).select_from(paid)
    owed = (
        sa.select(sa.func.coalesce(sa.func.sum(refunds.c.amount), 0))
        .select_from(paid.join(refunds, refunds.c.order_id == orders.c.id))
        .where(refunds.c.status.in_(OWED), *where)
    )
    units = paid.join(dispenses, dispenses.c.order_id == orders.c.id)
    outcome = sa.select(
        sa.func.coalesce(sa.func.sum(_is(UnitStatus.DROPPED)), 0),
        sa.func.coalesce(sa.func.sum(_is(UnitStatus.FAILED)), 0),
    ).select_from(units)
    by_product = (
        sa.select(
            order_items.c.product_id,
            sa.func.max(order_items.c.product_name),
            sa.func.count(dispenses.c.id),
            sa.func.coalesce(sa.func.sum(dispenses.c.unit_price), 0),
        )
        .select_from(units.join(order_items, order_items.c.id == dispenses.c.order_item_id))
        .where(dispenses.c.status == UnitStatus.DROPPED.value, *where)
        .group_by(order_items.c.product_id)
        .order_by(order_items.c.product_id)
    )
    async with ctx.engine.connect() as conn:
        count, gross, refunded = (await conn.execute(money.where(*where))).one()
        pending = await conn.scalar(owed)
        dropped, failed = (await conn.execute(outcome.where(*where))).one()
        products = (await conn.execute(by_product)).all()
    settled = int(dropped) + int(failed)
    return {
        "machine_id": machine_id,
        "from": start,
        "to": end,
        "orders_paid": int(count),
        "gross_paid": int(gross),
        "refunded": int(refunded),
        "refund_pending": int(pending or 0),
        "net": int(gross) - int(refunded),
        "units_dropped": int(dropped),
        "units_failed": int(failed),
        "failed_vend_rate": round(int(failed) / settled, 4) if settled else 0.0,
        "products": [
            {"product_id": p, "product_name": n, "units_sold": int(c), "revenue": int(r)}
            for p, n, c, r in products
        ],
    }


def _is(status: UnitStatus) -> sa.ColumnElement[int]:
    return sa.case((dispenses.c.status == status.value, 1), else_=0)
