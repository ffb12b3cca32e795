"""Payment notifications (webhook), payment status, cancellation and the sandbox pay page."""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.domain.model import OrderStatus
from vendhub.entrypoints.api.deps import ContainerDep, CtxDep
from vendhub.entrypoints.api.replies import OrderCancelled, PaymentOutcome, PaymentVerified
from vendhub.entrypoints.api.routers.orders import load, order_status_public
from vendhub.entrypoints.api.schemas import OrderPublic, PaymentMethodChange, VerifyClaim
from vendhub.services import checkout, orders, reconcile
from vendhub.services import payments as payment_service
from vendhub.services.errors import NotFound
from vendhub.services.views import PaymentView

router = APIRouter(prefix="/api/payments", tags=["payments"])


@router.post("/webhook")
async def webhook(request: Request, container: ContainerDep) -> PaymentOutcome:
    """Midtrans HTTP notification: verified over the raw body, stored, applied once."""
    body = await request.body()
    outcome = await payment_service.receive_notification(
        container.ctx, container.payments, dict(request.headers), body
    )
    container.metrics.webhooks.labels(outcome.value).inc()
    return PaymentOutcome(outcome=outcome.value)


@router.patch("/method/{order_id}")
async def change_method(
    order_id: str, body: PaymentMethodChange, container: ContainerDep
) -> OrderPublic:
    """The seed's method switch: a new payment (QR or page) for an order not yet paid."""
    await checkout.change_method(container.ctx, container.payments, order_id, body.payment_method)
    return await load(container.ctx, order_id)


@router.post("/verify/{order_id}")
async def verify(
    order_id: str, container: ContainerDep, body: VerifyClaim | None = None
) -> PaymentVerified:
    """The seed's "verify": the caller's claimed status is ignored; the gateway is asked."""
    asked = await reconcile.verify_now(container.ctx, container.payments, order_id)
    order = order_status_public(await orders.get_order(container.ctx, order_id))
    return PaymentVerified(
        order_id=order_id,
        status=order.status,
        payment_status=order.payment_status,
        paid=order.paid_at is not None,
        asked_gateway=asked,
        order=order,
    )


@router.get("/{order_id}")
async def payment_status(order_id: str, ctx: CtxDep) -> PaymentView:
    return await orders.payment_of(ctx, order_id)


@router.post("/cancel/{order_id}")
async def cancel(order_id: str, container: ContainerDep) -> OrderCancelled:
    await orders.cancel_order(container.ctx, order_id)
    # Best effort now; if the gateway is unreachable the payment jobs keep trying.
    await reconcile.close_at_gateway(
        container.ctx, container.payments, container.payment_policy, order_id
    )
    return OrderCancelled(order_id=order_id, status=OrderStatus.CANCELLED.value)


def _sandbox(container: Any) -> SandboxProvider:
    if not isinstance(container.payments, SandboxProvider):
        raise NotFound("the sandbox pay page exists only with PAYMENT_PROVIDER=sandbox")
    return container.payments


@router.get("/sandbox/{order_id}", response_class=HTMLResponse, include_in_schema=False)
async def sandbox_page(order_id: str, container: ContainerDep) -> HTMLResponse:
    _sandbox(container)
    order = await orders.get_order(container.ctx, order_id)
    oid = escape(order_id)
    lines = "".join(
        f"<li>{i['quantity']} × {escape(i['product_name'])} — Rp {i['unit_price']:,}</li>"
        for i in order["items"]
    )
    return HTMLResponse(
        f"<!doctype html><title>vendhub sandbox payment</title><h1>Order {oid}</h1>"
        f"<p>Status: <b>{escape(order['status'])}</b></p><ul>{lines}</ul>"
        f"<p>Total: Rp {order['total_amount']:,}</p>"
        f"<form method=post action='/api/payments/sandbox/{oid}/pay'>"
        "<button>Pay (sandbox, no money moves)</button></form>"
    )


@router.post("/sandbox/{order_id}/pay")
async def sandbox_pay(order_id: str, container: ContainerDep) -> PaymentOutcome:
    """Sends a correctly signed settlement notification through the webhook's own path."""
    provider = _sandbox(container)
    order = await orders.get_order(container.ctx, order_id)
    body = provider.signed_notification(order_id, order["total_amount"], "settlement")
    outcome = await payment_service.receive_notification(container.ctx, provider, {}, body)
    return PaymentOutcome(order_id=order_id, outcome=outcome.value)
