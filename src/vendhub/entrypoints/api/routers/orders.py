"""Orders: customers create and follow them; operators list them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from vendhub.domain.model import OrderStatus
from vendhub.entrypoints.api.access import OrderAccess, OriginDep, public_view
from vendhub.entrypoints.api.deps import AdminUser, ContainerDep, CtxDep, CurrentUser
from vendhub.entrypoints.api.schemas import (
    DispensePublic,
    MultiOrderCreate,
    OrderCreate,
    OrderItemPublic,
    OrderPublic,
    PaymentInfo,
    RefundPublic,
)
from vendhub.services import orders, refunds
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.orders import OrderLine

router = APIRouter(prefix="/api/orders", tags=["orders"])


def order_public(order: dict[str, Any]) -> OrderPublic:
    payment = order.get("payment")
    return OrderPublic(
        order_id=order["id"],
        **{
            k: order[k]
            for k in (
                "machine_id",
                "status",
                "total_amount",
                "refunded_amount",
                "expires_at",
                "paid_at",
                "dispensed_at",
                "created_at",
            )
        },
        items=[
            OrderItemPublic(**i, subtotal=i["unit_price"] * i["quantity"]) for i in order["items"]
        ],
        dispenses=[DispensePublic(command_id=d["id"], **d) for d in order["dispenses"]],
        refunds=[RefundPublic(**r) for r in order["refunds"]],
        refund_pending=any(r["status"] in ("PENDING", "FAILED") for r in order["refunds"]),
        payment=PaymentInfo(**payment) if payment else None,
    )


async def load(ctx: ServiceContext, order_id: str) -> OrderPublic:
    return order_public(await orders.get_order(ctx, order_id))


@router.post("", status_code=201)
async def create_order(
    body: OrderCreate, container: ContainerDep, origin: OriginDep
) -> OrderPublic:
    line = OrderLine(slot_number=body.slot_number, slot_id=body.slot_id, quantity=body.quantity)
    order_id = await checkout(
        container.ctx,
        container.payments,
        body.machine_id,
        [line],
        customer_phone=body.customer_phone,
        payment_method=body.payment_method,
        origin=origin.order,
    )
    return (await load(container.ctx, order_id)).model_copy(
        update={"access_token": origin.access_token}
    )


@router.post("/multi", status_code=201)
async def create_multi_order(
    body: MultiOrderCreate, container: ContainerDep, origin: OriginDep
) -> OrderPublic:
    lines = [
        OrderLine(slot_number=i.slot_number, slot_id=i.slot_id, quantity=i.quantity)
        for i in body.items
    ]
    order_id = await checkout(
        container.ctx,
        container.payments,
        body.machine_id,
        lines,
        customer_phone=body.customer_phone,
        payment_method=body.payment_method,
        origin=origin.order,
    )
    return (await load(container.ctx, order_id)).model_copy(
        update={"access_token": origin.access_token}
    )


@router.get("")
async def list_orders(
    ctx: CtxDep,
    _: CurrentUser,
    machine_id: str | None = None,
    status: OrderStatus | None = None,
    limit: int = Query(default=50, ge=1, le=500),
) -> list[dict[str, Any]]:
    rows = await orders.list_orders(ctx, machine_id, status.value if status else None, limit)
    return [{"order_id": r.pop("id"), **r} for r in rows]


@router.get("/{order_id}")
async def get_order(order_id: str, ctx: CtxDep, full: OrderAccess) -> OrderPublic:
    """Everyone sees the status; details need the order's token, its kiosk or an operator."""
    order = await load(ctx, order_id)
    return order if full else public_view(order)


@router.post("/{order_id}/refund")
async def refund_order(order_id: str, container: ContainerDep, _: AdminUser) -> dict[str, Any]:
    """Refund what was paid and neither dropped nor refunded; calling again changes nothing."""
    refund = await refunds.request_manual_refund(
        container.ctx, container.payments, container.payment_policy, order_id
    )
    return {
        "success": refund["status"] != "FAILED",
        "order_id": order_id,
        "refund": RefundPublic(**refund),
    }
