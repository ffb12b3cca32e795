"""Orders: customers create and follow them; operators list them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vendhub.domain.model import OrderStatus, RefundStatus
from vendhub.entrypoints.api.access import OrderAccess, OriginDep
from vendhub.entrypoints.api.deps import AdminUser, ContainerDep, CtxDep, CurrentUser, WindowDep
from vendhub.entrypoints.api.replies import Page, RefundResponse
from vendhub.entrypoints.api.schemas import (
    DispensePublic,
    MultiOrderCreate,
    OrderCreate,
    OrderItemPublic,
    OrderPublic,
    OrderStatusPublic,
    PaymentInfo,
    RefundPublic,
)
from vendhub.services import orders, refunds
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.orders import OrderLine
from vendhub.services.views import OrderSummaryView

router = APIRouter(prefix="/api/orders", tags=["orders"])

STATUS_FIELDS = (
    "machine_id",
    "status",
    "total_amount",
    "refunded_amount",
    "expires_at",
    "paid_at",
    "dispensed_at",
    "created_at",
)


def order_status_public(order: dict[str, Any]) -> OrderStatusPublic:
    """The fields anyone polling the order may see (the seed's kiosk fields among them)."""
    return OrderStatusPublic(**_status_fields(order))


def public_order(order: dict[str, Any]) -> OrderPublic:
    """The order as an anonymous reader without its token sees it: the public status fields,
    nothing that identifies the customer, their payment or the order's refunds."""
    return OrderPublic(**_status_fields(order), refunds=[], payment=None)


def order_public(order: dict[str, Any]) -> OrderPublic:
    """The whole order, including what identifies the customer and how they pay."""
    payment = order.get("payment")
    return OrderPublic(
        **_status_fields(order),
        customer_phone=order["customer_phone"],
        payment_method=order["payment_method"],
        payment_url=payment["redirect_url"] if payment else None,
        payment_token=payment["token"] if payment else None,
        qr_string=payment["qr_string"] if payment else None,
        refunds=[RefundPublic(**r) for r in order["refunds"]],
        payment=PaymentInfo(**payment) if payment else None,
        paid_amount=order["paid_amount"],
        refund_owed=order["refund_owed"],
        refund_held=order["refund_held"],
    )


def _status_fields(order: dict[str, Any]) -> dict[str, Any]:
    items = order["items"]
    payment = order.get("payment")
    return {
        "order_id": order["id"],
        **{k: order[k] for k in STATUS_FIELDS},
        "payment_status": payment["status"] if payment else None,
        "payment_processed_at": payment["paid_at"] if payment else None,
        "product_name": items[0]["product_name"],
        "slot_number": items[0]["slot_number"],
        "unit_price": items[0]["unit_price"],
        "quantity": sum(i["quantity"] for i in items),
        "items": [OrderItemPublic(**i, subtotal=i["unit_price"] * i["quantity"]) for i in items],
        "dispenses": [DispensePublic(command_id=d["id"], **d) for d in order["dispenses"]],
        "refund_pending": order["refund_owed"] > 0,
    }


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
    page: WindowDep,
    machine_id: str | None = None,
    status: OrderStatus | None = None,
) -> Page[OrderSummaryView]:
    part = await orders.list_orders(ctx, machine_id, status.value if status else None, page)
    return Page[OrderSummaryView].of(part)


@router.get("/machine/{machine_id}")
async def machine_orders(
    machine_id: str,
    ctx: CtxDep,
    _: CurrentUser,
    page: WindowDep,
    status: OrderStatus | None = None,
) -> Page[OrderSummaryView]:
    """The seed's per-machine order list (operators), newest first."""
    part = await orders.machine_orders(ctx, machine_id, status.value if status else None, page)
    return Page[OrderSummaryView].of(part)


@router.get("/{order_id}")
async def get_order(order_id: str, ctx: CtxDep, full: OrderAccess) -> OrderPublic:
    """Everyone sees the status; details need the order's token, its kiosk or an operator."""
    order = await orders.get_order(ctx, order_id)
    return order_public(order) if full else public_order(order)


@router.post("/{order_id}/refund")
async def refund_order(order_id: str, container: ContainerDep, _: AdminUser) -> RefundResponse:
    """Refund what was paid and neither dropped nor refunded; calling again changes nothing."""
    refund = await refunds.request_manual_refund(
        container.ctx, container.payments, container.payment_policy, order_id
    )
    return RefundResponse(
        success=refund["status"] != RefundStatus.FAILED.value,
        order_id=order_id,
        refund=RefundPublic(**refund),
    )
