"""Placing, reading, cancelling and expiring orders."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db import fast
from vendhub.adapters.db.tables import (
    dispenses,
    machines,
    order_items,
    orders,
    payments,
    products,
    refunds,
    slots,
)
from vendhub.domain.model import OrderStatus
from vendhub.domain.payments import PaymentStatus
from vendhub.services import refunds as refunds_service
from vendhub.services import stock
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import UNREACHABLE, lock_machine, lock_order, set_order_status
from vendhub.services.errors import Conflict, Forbidden, InvalidRequest, NotFound, RateLimited
from vendhub.services.ids import new_id, new_order_id
from vendhub.services.passes import isolated
from vendhub.services.rows import every, first
from vendhub.services.views import OrderSummaryView, PaymentView, Slice, Window


@dataclass(frozen=True, slots=True)
class OrderLine:
    slot_number: int | None = None
    slot_id: str | None = None
    quantity: int = 1


@dataclass(frozen=True, slots=True)
class OrderOrigin:
    """Who places an order: `client_key` is a hashed client address, kiosk:{machine} or
    user:{id}; anonymous clients have a cap on unpaid units, a kiosk one open order."""

    client_key: str
    access_token_hash: str | None = None
    max_unpaid_units: int | None = None
    kiosk_machine: str | None = None


async def place_order(
    ctx: ServiceContext,
    machine_id: str | None,
    lines: list[OrderLine],
    *,
    provider: str,
    customer_phone: str | None = None,
    payment_method: str | None = None,
    origin: OrderOrigin | None = None,
) -> PlacedOrder:
    """Reserve stock for every line and create the order, all or nothing."""
    machine_id = machine_id or ctx.tunables.default_machine_id
    if not lines:
        raise InvalidRequest("an order needs at least one item")
    now = ctx.clock()
    for line in lines:
        if line.quantity < 1:
            raise InvalidRequest("quantity must be at least 1")
    async with ctx.engine.begin() as conn:
        # The machine and the first line's slot in one statement.
        machine = await first(conn, _slot_for_sale_query(machine_id, _slot_cond(lines[0]), True))
        if machine is None:
            raise NotFound(f"machine {machine_id} not found")
        if not machine["m_active"]:
            raise Conflict(f"machine {machine_id} is not accepting orders")
        if machine["m_status"] in UNREACHABLE:
            raise Conflict(f"machine {machine_id} is {machine['m_status']}; it takes no orders now")
        if origin is not None:
            await _within_caps(ctx, conn, machine_id, origin, sum(li.quantity for li in lines))
        first_slot = machine if machine["id"] is not None else None
        merged = await _merge_lines(conn, machine_id, lines, first_slot)
        # Slot rows are locked in one global order (by id), so two orders naming the same
        # slots in opposite orders cannot deadlock each other.
        for slot_id in sorted(merged):
            await stock.reserve(conn, slot_id, merged[slot_id][2], now)
        order_id = new_order_id(now)
        total = 0
        items = []
        for slot_id, (slot, product, quantity) in merged.items():
            price = (
                slot["price_override"] if slot["price_override"] is not None else product["price"]
            )
            total += price * quantity
            items.append(
                {
                    "id": new_id(),
                    "order_id": order_id,
                    "slot_id": slot_id,
                    "slot_number": slot["slot_number"],
                    "product_id": product["id"],
                    "product_name": product["name"],
                    "unit_price": price,
                    "quantity": quantity,
                }
            )
        order = {
            "id": order_id,
            "machine_id": machine_id,
            "status": OrderStatus.PENDING.value,
            "total_amount": total,
            "customer_phone": customer_phone,
            "payment_method": payment_method,
            "client_key": origin.client_key if origin else None,
            "access_token_hash": origin.access_token_hash if origin else None,
            "expires_at": now + timedelta(seconds=ctx.tunables.order_ttl_s),
            "created_at": now,
            "updated_at": now,
        }
        payment = {
            "id": new_id(),
            "order_id": order_id,
            "provider": provider,
            "status": PaymentStatus.PENDING.value,
            "amount": total,
            "created_at": now,
            "updated_at": now,
        }
        await _write_order(conn, order, items, payment)
    return PlacedOrder(order_id, total, payment_method, customer_phone, items)


_ORDER_COLUMNS = (
    "id",
    "machine_id",
    "status",
    "total_amount",
    "customer_phone",
    "payment_method",
    "client_key",
    "access_token_hash",
    "expires_at",
    "created_at",
    "updated_at",
)
_ITEM_COLUMNS = (
    "id",
    "order_id",
    "slot_id",
    "slot_number",
    "product_id",
    "product_name",
    "unit_price",
    "quantity",
)
_PAYMENT_COLUMNS = ("id", "order_id", "provider", "status", "amount", "created_at", "updated_at")
_INSERT_ORDER = fast.Query(lambda: sa.insert(orders), columns=_ORDER_COLUMNS)
_INSERT_ITEMS = fast.Query(lambda: sa.insert(order_items), columns=_ITEM_COLUMNS)
_INSERT_PAYMENT = fast.Query(lambda: sa.insert(payments), columns=_PAYMENT_COLUMNS)
_WRITE_ORDER: dict[int, fast.Query] = {}


def _order_written(lines: int) -> sa.Insert:
    """PostgreSQL: the order, its `lines` items and its payment row, one statement."""
    items = sa.insert(order_items).values(
        [
            {c: sa.bindparam(f"i{n}_{c}", type_=order_items.c[c].type) for c in _ITEM_COLUMNS}
            for n in range(lines)
        ]
    )
    return (
        fast.insert_values(payments, _PAYMENT_COLUMNS, "p_")
        .add_cte(fast.insert_values(orders, _ORDER_COLUMNS, "o_").cte("new_order"))
        .add_cte(items.cte("new_items"))
    )


async def _write_order(
    conn: AsyncConnection,
    order: dict[str, Any],
    items: list[dict[str, Any]],
    payment: dict[str, Any],
) -> None:
    if not fast.writes_in_ctes(conn):
        await _INSERT_ORDER.count(conn, **order)
        await _INSERT_ITEMS.many(conn, items)
        await _INSERT_PAYMENT.count(conn, **payment)
        return
    query = _WRITE_ORDER.get(len(items))
    if query is None:
        query = _WRITE_ORDER[len(items)] = fast.Query(partial(_order_written, len(items)))
    params = {**fast.prefixed("o_", order), **fast.prefixed("p_", payment)}
    for n, item in enumerate(items):
        params.update(fast.prefixed(f"i{n}_", item))
    await query.count(conn, **params)


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """What checkout needs to ask the gateway for payment, without reading it back."""

    order_id: str
    total_amount: int
    payment_method: str | None
    customer_phone: str | None
    items: list[dict[str, Any]]


async def _within_caps(
    ctx: ServiceContext, conn: AsyncConnection, machine_id: str, origin: OrderOrigin, units: int
) -> None:
    """A kiosk holds one open order; an anonymous client few unpaid units per machine."""
    if origin.kiosk_machine is None and origin.max_unpaid_units is None:
        return
    # The machine row lock serialises concurrent orders of one client at this machine.
    await lock_machine(conn, machine_id)
    open_orders = sa.and_(
        orders.c.machine_id == machine_id,
        orders.c.client_key == origin.client_key,
        orders.c.status == OrderStatus.PENDING.value,
    )
    if origin.kiosk_machine is not None:
        if origin.kiosk_machine != machine_id:
            raise Forbidden(f"this kiosk key belongs to machine {origin.kiosk_machine}")
        held = await conn.scalar(sa.select(sa.func.count()).select_from(orders).where(open_orders))
        if held:
            raise Conflict("this kiosk already has an open order; pay or cancel it first")
        return
    assert origin.max_unpaid_units is not None
    held_units, first_expiry = (
        await conn.execute(
            sa.select(sa.func.sum(order_items.c.quantity), sa.func.min(orders.c.expires_at))
            .select_from(orders.join(order_items, order_items.c.order_id == orders.c.id))
            .where(open_orders)
        )
    ).one()
    if (held_units or 0) + units > origin.max_unpaid_units:
        wait = (first_expiry - ctx.clock()).total_seconds() if first_expiry else 60.0
        raise RateLimited(
            f"at most {origin.max_unpaid_units} unpaid units per client at machine {machine_id}; "
            "pay or cancel an open order first",
            max(1.0, wait),
        )


async def access_info(ctx: ServiceContext, order_id: str) -> tuple[str, str | None] | None:
    """(machine_id, access_token_hash) of an order, or None if there is no such order."""
    async with ctx.engine.connect() as conn:
        row = await first(
            conn,
            sa.select(orders.c.machine_id, orders.c.access_token_hash).where(
                orders.c.id == order_id
            ),
        )
    return (row["machine_id"], row["access_token_hash"]) if row else None


async def _merge_lines(
    conn: AsyncConnection,
    machine_id: str,
    lines: list[OrderLine],
    first_slot: RowMapping | None,
) -> dict[str, tuple[Any, Any, int]]:
    """Resolve each line to its slot and product; the same slot twice becomes one line.
    `first_slot`: the first line's slot, already read (None: not found by that read)."""
    merged: dict[str, tuple[Any, Any, int]] = {}
    quantities: dict[str, int] = defaultdict(int)
    for n, line in enumerate(lines):
        if n == 0:
            row = first_slot
        else:
            row = await first(conn, _slot_for_sale_query(machine_id, _slot_cond(line)))
        if row is None and line.slot_id and line.slot_id.isdigit() and len(line.slot_id) <= 6:
            # The seed's numeric slot ids counted 1, 2, 3… per machine: read as the slot number.
            row = await first(
                conn,
                _slot_for_sale_query(machine_id, slots.c.slot_number == int(line.slot_id)),
            )
        if row is None:
            which = line.slot_id or line.slot_number
            raise NotFound(f"slot {which} not found on machine {machine_id}")
        if not row["is_active"] or row["p_id"] is None or not row["p_active"]:
            raise Conflict(f"slot {row['slot_number']} has nothing for sale")
        quantities[row["id"]] += line.quantity
        product = {"id": row["p_id"], "name": row["p_name"], "price": row["p_price"]}
        merged[row["id"]] = (row, product, quantities[row["id"]])
    return merged


def _slot_cond(line: OrderLine) -> sa.ColumnElement[bool]:
    return slots.c.id == line.slot_id if line.slot_id else slots.c.slot_number == line.slot_number


def _slot_for_sale_query(
    machine_id: str, cond: sa.ColumnElement[bool], with_machine: bool = False
) -> sa.Select[Any]:
    """A slot of the machine with its product; `with_machine`: from the machine's row (one
    row whenever the machine exists; the slot's columns are NULL if no slot matches)."""
    columns: list[Any] = [
        slots,
        products.c.id.label("p_id"),
        products.c.name.label("p_name"),
        products.c.price.label("p_price"),
        products.c.is_active.label("p_active"),
    ]
    if not with_machine:
        return (
            sa.select(*columns)
            .outerjoin(products, products.c.id == slots.c.product_id)
            .where(slots.c.machine_id == machine_id, cond)
        )
    return (
        sa.select(
            machines.c.is_active.label("m_active"), machines.c.status.label("m_status"), *columns
        )
        .select_from(machines)
        .outerjoin(slots, sa.and_(slots.c.machine_id == machines.c.id, cond))
        .outerjoin(products, products.c.id == slots.c.product_id)
        .where(machines.c.id == machine_id)
        .limit(1)
    )


async def get_order(ctx: ServiceContext, order_id: str) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        order = await first(conn, sa.select(orders).where(orders.c.id == order_id))
        if order is None:
            raise NotFound(f"order {order_id} not found")
        items = await every(
            conn,
            sa.select(order_items)
            .where(order_items.c.order_id == order_id)
            .order_by(order_items.c.id),
        )
        units = await every(
            conn,
            sa.select(dispenses).where(dispenses.c.order_id == order_id).order_by(dispenses.c.id),
        )
        owed = await every(
            conn, sa.select(refunds).where(refunds.c.order_id == order_id).order_by(refunds.c.id)
        )
        payment = await first(conn, sa.select(payments).where(payments.c.order_id == order_id))
        money = await refunds_service.ledger(conn, order_id)
    return {
        **order,
        "refunded_amount": money.refunded,
        "paid_amount": money.paid,
        "refund_owed": money.owed,
        "refund_held": money.held,
        "items": [dict(i) for i in items],
        "dispenses": [dict(u) for u in units],
        "refunds": [dict(r) for r in owed],
        "payment": dict(payment) if payment else None,
    }


async def list_orders(
    ctx: ServiceContext, machine_id: str | None, status: str | None, window: Window
) -> Slice[OrderSummaryView]:
    stmt = sa.select(orders, orders.c.id.label("order_id")).order_by(
        orders.c.created_at.desc(), orders.c.id.desc()
    )
    if machine_id:
        stmt = stmt.where(orders.c.machine_id == machine_id)
    if status:
        stmt = stmt.where(orders.c.status == status)
    async with ctx.engine.connect() as conn:
        rows = await every(conn, window.apply(stmt))
    return Slice.of([OrderSummaryView.model_validate(r) for r in rows], window)


async def machine_orders(
    ctx: ServiceContext, machine_id: str, status: str | None, window: Window
) -> Slice[OrderSummaryView]:
    async with ctx.engine.connect() as conn:
        if await conn.scalar(sa.select(machines.c.id).where(machines.c.id == machine_id)) is None:
            raise NotFound(f"machine {machine_id} not found")
    return await list_orders(ctx, machine_id, status, window)


async def payment_of(ctx: ServiceContext, order_id: str) -> PaymentView:
    async with ctx.engine.connect() as conn:
        row = await first(conn, sa.select(payments).where(payments.c.order_id == order_id))
    if row is None:
        raise NotFound(f"payment for order {order_id} not found")
    return PaymentView.model_validate(row)


async def close_unpaid(
    ctx: ServiceContext, conn: AsyncConnection, order_id: str, new: OrderStatus
) -> bool:
    """PENDING → EXPIRED/CANCELLED, releasing every reserved unit. False if not PENDING."""
    order = await lock_order(conn, order_id)
    if order is None:
        raise NotFound(f"order {order_id} not found")
    if order["status"] != OrderStatus.PENDING.value:
        return False
    now = ctx.clock()
    await set_order_status(conn, order, new, now)
    items = await every(conn, sa.select(order_items).where(order_items.c.order_id == order_id))
    for item in items:
        await stock.release(
            conn,
            item["slot_id"],
            item["quantity"],
            now,
            order_id=order_id,
            reason=f"order {order_id} {new.value.lower()}",
        )
    await conn.execute(
        sa.update(order_items)
        .where(order_items.c.order_id == order_id)
        .values(released=order_items.c.quantity)
    )
    status = PaymentStatus.EXPIRED if new is OrderStatus.EXPIRED else PaymentStatus.FAILED
    await conn.execute(
        sa.update(payments)
        .where(payments.c.order_id == order_id)
        .values(status=status.value, updated_at=now)
    )
    return True


async def cancel_order(ctx: ServiceContext, order_id: str) -> None:
    async with ctx.engine.begin() as conn:
        if not await close_unpaid(ctx, conn, order_id, OrderStatus.CANCELLED):
            raise Conflict(f"order {order_id} can no longer be cancelled")


async def expire_due_orders(ctx: ServiceContext, limit: int = 100) -> list[str]:
    """Unpaid orders past their TTL: expired and their stock released, one transaction each."""
    now = ctx.clock()
    async with ctx.engine.connect() as conn:
        due = (
            (
                await conn.execute(
                    sa.select(orders.c.id)
                    .where(orders.c.status == OrderStatus.PENDING.value, orders.c.expires_at <= now)
                    .order_by(orders.c.expires_at)
                    .limit(limit)
                )
            )
            .scalars()
            .all()
        )
    expired = []
    for order_id in due:
        if await isolated(ctx, "expire", f"order {order_id}", partial(_expire, ctx, order_id)):
            expired.append(order_id)
    return expired


async def _expire(ctx: ServiceContext, order_id: str) -> bool:
    async with ctx.engine.begin() as conn:
        return await close_unpaid(ctx, conn, order_id, OrderStatus.EXPIRED)
