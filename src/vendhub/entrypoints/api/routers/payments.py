"""Payment notifications (webhook), payment status, cancellation and the sandbox pay page."""

from __future__ import annotations

from html import escape
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from vendhub.adapters.db.tables import payments
from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.entrypoints.api.access import OrderAccess, require_order_access
from vendhub.entrypoints.api.deps import ContainerDep, CtxDep
from vendhub.services import orders, reconcile
from vendhub.services import payments as payment_service
from vendhub.services.errors import NotFound

router = APIRouter(prefix="/api/payments", tags=["payments"])


@router.post("/webhook")
async def webhook(request: Request, container: ContainerDep) -> dict[str, Any]:
    """Midtrans HTTP notification: verified over the raw body, stored, applied once."""
    body = await request.body()
    outcome = await payment_service.receive_notification(
        container.ctx, container.payments, dict(request.headers), body
    )
    container.metrics.webhooks.labels(outcome.value).inc()
    return {"success": True, "outcome": outcome.value}


@router.get("/{order_id}")
async def payment_status(order_id: str, ctx: CtxDep, full: OrderAccess) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        row = (
            (await conn.execute(sa.select(payments).where(payments.c.order_id == order_id)))
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"payment for order {order_id} not found")
    if not full:  # without the order's token: no payment details
        return {k: row[k] for k in ("order_id", "provider", "status", "amount")}
    return {
        k: row[k]
        for k in (
            "order_id",
            "provider",
            "status",
            "amount",
            "transaction_id",
            "payment_type",
            "redirect_url",
            "qr_string",
            "qr_url",
            "gateway_expires_at",
            "paid_at",
        )
    }


@router.post("/cancel/{order_id}", dependencies=[Depends(require_order_access)])
async def cancel(order_id: str, container: ContainerDep) -> dict[str, Any]:
    await orders.cancel_order(container.ctx, order_id)
    # Best effort now; if the gateway is unreachable the payment jobs keep trying.
    await reconcile.close_at_gateway(
        container.ctx, container.payments, container.payment_policy, order_id
    )
    return {"success": True, "order_id": order_id, "status": "CANCELLED"}


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
async def sandbox_pay(order_id: str, container: ContainerDep) -> dict[str, Any]:
    """Sends a correctly signed settlement notification through the webhook's own path."""
    provider = _sandbox(container)
    order = await orders.get_order(container.ctx, order_id)
    body = provider.signed_notification(order_id, order["total_amount"], "settlement")
    outcome = await payment_service.receive_notification(container.ctx, provider, {}, body)
    return {"success": True, "order_id": order_id, "outcome": outcome.value}
