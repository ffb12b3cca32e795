"""Checkout: place the order, then ask the gateway how the customer pays for it."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.tables import order_items, orders, payments
from vendhub.domain.model import OrderStatus
from vendhub.domain.payments import PaymentStatus
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import lock_order
from vendhub.services.errors import Conflict, NotFound
from vendhub.services.orders import OrderLine, OrderOrigin, PlacedOrder, close_unpaid, place_order
from vendhub.services.ports import GatewayError, PaymentLine, PaymentProvider, PaymentRequest
from vendhub.services.rows import every

log = logging.getLogger(__name__)
# No payment_method means the Snap page, where the customer picks.
SNAP = "snap"


async def checkout(
    ctx: ServiceContext,
    provider: PaymentProvider,
    machine_id: str | None,
    lines: list[OrderLine],
    *,
    customer_phone: str | None,
    payment_method: str | None,
    origin: OrderOrigin | None = None,
) -> str:
    placed = await place_order(
        ctx,
        machine_id,
        lines,
        provider=provider.name,
        customer_phone=customer_phone,
        payment_method=payment_method,
        origin=origin,
    )
    order_id = placed.order_id
    try:
        await _attach_payment(ctx, provider, order_id, placed)
    except GatewayError:
        # No way to pay: give the stock back now rather than at the TTL.
        async with ctx.engine.begin() as conn:
            await close_unpaid(ctx, conn, order_id, OrderStatus.CANCELLED)
        raise
    return order_id


async def change_method(
    ctx: ServiceContext, provider: PaymentProvider, order_id: str, method: str | None
) -> bool:
    """(Re)create the payment of an unpaid order for another method; False if unchanged.

    The gateway may refuse (Midtrans keeps one transaction per order id): the order then keeps
    its current payment and the caller learns it must cancel and order again.
    """
    async with ctx.engine.begin() as conn:
        order = await lock_order(conn, order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        if order["status"] != OrderStatus.PENDING.value:
            raise Conflict(f"order {order_id} is {order['status']}: its payment can not change")
        previous = order["payment_method"]
        if (previous or SNAP) == (method or SNAP):
            return False
        await _set_method(conn, order_id, method)
    try:
        await _attach_payment(ctx, provider, order_id)
    except GatewayError as exc:
        async with ctx.engine.begin() as conn:
            await _set_method(conn, order_id, previous)
        if exc.retryable:
            raise
        log.warning("order %s: gateway refused method %s: %s", order_id, method, exc)
        raise Conflict(
            f"the payment gateway refused a new {method or SNAP} payment for order {order_id}; "
            "cancel it and order again"
        ) from None
    log.info("order %s: payment method %s -> %s", order_id, previous or SNAP, method or SNAP)
    return True


async def _set_method(conn: AsyncConnection, order_id: str, method: str | None) -> None:
    await conn.execute(
        sa.update(orders).where(orders.c.id == order_id).values(payment_method=method)
    )


async def _attach_payment(
    ctx: ServiceContext,
    provider: PaymentProvider,
    order_id: str,
    placed: PlacedOrder | None = None,
) -> None:
    """`placed`: the order just created in this call (then nothing is read back)."""
    if placed is None:
        async with ctx.engine.connect() as conn:
            order = (
                (await conn.execute(sa.select(orders).where(orders.c.id == order_id)))
                .mappings()
                .one()
            )
            items: list[Any] = await every(
                conn, sa.select(order_items).where(order_items.c.order_id == order_id)
            )
        placed = PlacedOrder(
            order_id,
            order["total_amount"],
            order["payment_method"],
            order["customer_phone"],
            items,
        )
    ttl_minutes = max(1, ctx.tunables.order_ttl_s // 60)
    request = PaymentRequest(
        order_id=order_id,
        amount=placed.total_amount,
        expiry_minutes=ttl_minutes,
        payment_method=placed.payment_method,
        customer_phone=placed.customer_phone,
        lines=[
            PaymentLine(
                id=str(i["slot_number"]),
                name=i["product_name"],
                price=i["unit_price"],
                quantity=i["quantity"],
            )
            for i in placed.items
        ],
    )
    instructions = await provider.create_payment(request)
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(payments)
            # A payment that arrived meanwhile keeps the instructions it was paid by.
            .where(
                payments.c.order_id == order_id,
                payments.c.status == PaymentStatus.PENDING.value,
            )
            .values(
                token=instructions.token,
                redirect_url=instructions.redirect_url,
                qr_string=instructions.qr_string,
                transaction_id=instructions.transaction_id,
                qr_url=instructions.qr_url,
                gateway_expires_at=instructions.expires_at,
                updated_at=ctx.clock(),
            )
        )
