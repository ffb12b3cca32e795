"""Checkout: place the order, then ask the gateway how the customer pays for it."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from vendhub.adapters.db.tables import order_items, orders, payments
from vendhub.domain.model import OrderStatus
from vendhub.services.context import ServiceContext
from vendhub.services.orders import OrderLine, OrderOrigin, close_unpaid, place_order
from vendhub.services.ports import GatewayError, PaymentLine, PaymentProvider, PaymentRequest
from vendhub.services.rows import every

log = logging.getLogger(__name__)


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
    order_id = await place_order(
        ctx,
        machine_id,
        lines,
        provider=provider.name,
        customer_phone=customer_phone,
        payment_method=payment_method,
        origin=origin,
    )
    try:
        await _attach_payment(ctx, provider, order_id)
    except GatewayError:
        # No way to pay: give the stock back now rather than at the TTL.
        async with ctx.engine.begin() as conn:
            await close_unpaid(ctx, conn, order_id, OrderStatus.CANCELLED)
        raise
    return order_id


async def _attach_payment(ctx: ServiceContext, provider: PaymentProvider, order_id: str) -> None:
    async with ctx.engine.connect() as conn:
        order = (
            (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).mappings().one()
        )
        items = await every(conn, sa.select(order_items).where(order_items.c.order_id == order_id))
    ttl_minutes = max(1, ctx.tunables.order_ttl_s // 60)
    request = PaymentRequest(
        order_id=order_id,
        amount=order["total_amount"],
        expiry_minutes=ttl_minutes,
        payment_method=order["payment_method"],
        customer_phone=order["customer_phone"],
        lines=[
            PaymentLine(
                id=str(i["slot_number"]),
                name=i["product_name"],
                price=i["unit_price"],
                quantity=i["quantity"],
            )
            for i in items
        ],
    )
    instructions = await provider.create_payment(request)
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(payments)
            .where(payments.c.order_id == order_id)
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
