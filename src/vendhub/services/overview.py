"""Read side of the kiosk and console: public order progress, fleet board, sales by day."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from vendhub.adapters.db.tables import (
    dispenses,
    machines,
    order_items,
    orders,
    payments,
    products,
    refunds,
    slots,
    telemetry,
)
from vendhub.domain.model import UnitStatus
from vendhub.services import alerts
from vendhub.services.context import ServiceContext
from vendhub.services.errors import NotFound
from vendhub.services.rows import every, first

# A slot at or below this share of its capacity is "low" on the dashboard.
LOW_STOCK_FRACTION = 0.2


async def public_order_status(ctx: ServiceContext, order_id: str) -> dict[str, Any]:
    """What a kiosk may show anyone holding the order id: progress and money back, no more."""
    async with ctx.engine.connect() as conn:
        order = await first(
            conn,
            sa.select(orders.c.status, orders.c.refunded_amount).where(orders.c.id == order_id),
        )
        if order is None:
            raise NotFound(f"order {order_id} not found")
        units = (
            await conn.execute(
                sa.select(dispenses.c.status, sa.func.count())
                .where(dispenses.c.order_id == order_id)
                .group_by(dispenses.c.status)
            )
        ).all()
        quantity = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(order_items.c.quantity), 0)).where(
                order_items.c.order_id == order_id
            )
        )
        owed = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(refunds.c.amount), 0)).where(
                refunds.c.order_id == order_id
            )
        )
    by_status = {s: int(n) for s, n in units}
    return {
        "order_id": order_id,
        "status": order["status"],
        "units_total": int(quantity or 0),
        "units_dropped": by_status.get(UnitStatus.DROPPED.value, 0),
        "units_failed": by_status.get(UnitStatus.FAILED.value, 0),
        "refund_amount": int(owed or 0),
        "refunded_amount": int(order["refunded_amount"]),
    }


async def fleet(ctx: ServiceContext) -> list[dict[str, Any]]:
    """Every machine with presence, its latest reading, low-stock slots and open alerts."""
    latest = (
        sa.select(telemetry.c.machine_id, sa.func.max(telemetry.c.id).label("tid"))
        .group_by(telemetry.c.machine_id)
        .subquery()
    )
    low = sa.and_(
        slots.c.is_active.is_(True),
        slots.c.product_id.is_not(None),
        slots.c.current_stock - slots.c.reserved <= slots.c.capacity * LOW_STOCK_FRACTION,
    )
    async with ctx.engine.connect() as conn:
        rows = await every(
            conn,
            sa.select(
                machines,
                telemetry.c.temperature,
                telemetry.c.humidity,
                telemetry.c.received_at.label("reading_at"),
            )
            .outerjoin(latest, latest.c.machine_id == machines.c.id)
            .outerjoin(telemetry, telemetry.c.id == latest.c.tid)
            .order_by(machines.c.id),
        )
        lows: dict[str, int] = dict(
            (
                await conn.execute(
                    sa.select(slots.c.machine_id, sa.func.count())
                    .where(low)
                    .group_by(slots.c.machine_id)
                )
            ).all()
        )
    open_alerts = await alerts.open_counts(ctx)
    return [
        {
            "id": r["id"],
            "name": r["name"],
            "location": r["location"],
            "status": r["status"],
            "is_active": bool(r["is_active"]),
            "last_seen_at": r["last_seen_at"],
            "temperature": r["temperature"],
            "humidity": r["humidity"],
            "low_stock": int(lows.get(r["id"], 0)),
            "open_alerts": open_alerts.get(r["id"], 0),
        }
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class DaySales:
    day: date
    orders: int
    gross: int
    refunded: int

    @property
    def net(self) -> int:
        return self.gross - self.refunded


def local_day_bounds(tz: ZoneInfo, first_day: date, last_day: date) -> tuple[datetime, datetime]:
    """[start of first_day, start of the day after last_day) in `tz`, as aware datetimes."""
    start = datetime.combine(first_day, time(), tz)
    end = datetime.combine(last_day + timedelta(days=1), time(), tz)
    return start, end


async def sales_by_day(
    ctx: ServiceContext, tz: ZoneInfo, first_day: date, last_day: date, machine_id: str | None
) -> list[DaySales]:
    """Paid orders per local day, every day present (zeros included)."""
    start, end = local_day_bounds(tz, first_day, last_day)
    where = [payments.c.paid_at >= start, payments.c.paid_at < end]
    if machine_id:
        where.append(orders.c.machine_id == machine_id)
    # Grouped here rather than in SQL: a local-time day needs the zone database, which
    # SQLite and MariaDB may lack; a day's paid orders are few enough to read.
    stmt = (
        sa.select(payments.c.paid_at, payments.c.amount, orders.c.refunded_amount)
        .select_from(payments.join(orders, orders.c.id == payments.c.order_id))
        .where(*where)
    )
    totals: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    async with ctx.engine.connect() as conn:
        for paid_at, amount, refunded in (await conn.execute(stmt)).all():
            bucket = totals[paid_at.astimezone(tz).date()]
            bucket[0] += 1
            bucket[1] += int(amount)
            bucket[2] += int(refunded)
    days = (last_day - first_day).days + 1
    result = []
    for i in range(days):
        day = first_day + timedelta(days=i)
        n, gross, refunded = totals.get(day, [0, 0, 0])
        result.append(DaySales(day, n, gross, refunded))
    return result


async def sales_by(
    ctx: ServiceContext, start: datetime, end: datetime, key: str
) -> list[dict[str, Any]]:
    """Units dropped and revenue in [start, end) per machine or per product."""
    column = orders.c.machine_id if key == "machine" else order_items.c.product_name
    stmt = (
        sa.select(
            column.label("key"),
            sa.func.count(dispenses.c.id),
            sa.func.coalesce(sa.func.sum(dispenses.c.unit_price), 0),
        )
        .select_from(
            payments.join(orders, orders.c.id == payments.c.order_id)
            .join(dispenses, dispenses.c.order_id == orders.c.id)
            .join(order_items, order_items.c.id == dispenses.c.order_item_id)
        )
        .where(
            payments.c.paid_at >= start,
            payments.c.paid_at < end,
            dispenses.c.status == UnitStatus.DROPPED.value,
        )
        .group_by(column)
        .order_by(sa.func.coalesce(sa.func.sum(dispenses.c.unit_price), 0).desc(), column)
    )
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [{"key": k, "units": int(n), "revenue": int(r)} for k, n, r in rows]


@dataclass(frozen=True, slots=True)
class OrderQuery:
    machine_id: str | None = None
    status: str | None = None
    start: datetime | None = None
    end: datetime | None = None


async def order_page(
    ctx: ServiceContext, q: OrderQuery, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Orders newest first with their item count, and how many match in all."""
    where = []
    if q.machine_id:
        where.append(orders.c.machine_id == q.machine_id)
    if q.status:
        where.append(orders.c.status == q.status)
    if q.start is not None:
        where.append(orders.c.created_at >= q.start)
    if q.end is not None:
        where.append(orders.c.created_at < q.end)
    units = (
        sa.select(sa.func.coalesce(sa.func.sum(order_items.c.quantity), 0))
        .where(order_items.c.order_id == orders.c.id)
        .scalar_subquery()
    )
    stmt = (
        sa.select(orders, units.label("units"))
        .where(*where)
        .order_by(orders.c.created_at.desc(), orders.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    async with ctx.engine.connect() as conn:
        total = await conn.scalar(sa.select(sa.func.count()).select_from(orders).where(*where))
        rows = [dict(r) for r in await every(conn, stmt)]
    return rows, int(total or 0)


async def all_products(ctx: ServiceContext) -> list[dict[str, Any]]:
    """Every product, inactive ones too (the console edits and re-activates them)."""
    async with ctx.engine.connect() as conn:
        return [dict(r) for r in await every(conn, sa.select(products).order_by(products.c.name))]
