"""Payment notifications (webhook), payment status, cancellation and the sandbox pay page."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.domain.model import OrderStatus
from vendhub.entrypoints.api.access import OrderAccess, require_order_access
from vendhub.entrypoints.api.deps import ContainerDep, CtxDep
from vendhub.entrypoints.api.replies import OrderCancelled, PaymentOutcome, PaymentVerified
from vendhub.entrypoints.api.routers.orders import load, order_status_public
from vendhub.entrypoints.api.schemas import OrderPublic, PaymentMethodChange, VerifyClaim
from vendhub.entrypoints.api.shedding import InflightLimit, overloaded
from vendhub.entrypoints.web.kiosk import qr_svg
from vendhub.entrypoints.web.render import Pages, svg
from vendhub.services import checkout, orders, reconcile
from vendhub.services import payments as payment_service
from vendhub.services.errors import NotFound
from vendhub.services.views import PaymentView

router = APIRouter(prefix="/api/payments", tags=["payments"])


@router.post(
    "/webhook",
    response_model=PaymentOutcome,
    responses={503: {"description": "overloaded: retry after Retry-After"}},
)
async def webhook(request: Request, container: ContainerDep) -> PaymentOutcome | JSONResponse:
    """Midtrans HTTP notification: verified over the raw body, stored, applied once.
    Beyond WEBHOOK_MAX_INFLIGHT at once it is shed before any work (503; Midtrans retries)."""
    gate: InflightLimit = request.app.state.webhook_gate
    if not gate.enter():
        container.metrics.webhooks.labels("shed").inc()
        return overloaded()
    try:
        body = await request.body()
        async with gate.working:
            outcome = await payment_service.receive_notification(
                container.ctx, container.payments, dict(request.headers), body
            )
    finally:
        gate.leave()
    container.metrics.webhooks.labels(outcome.value).inc()
    return PaymentOutcome(outcome=outcome.value)


@router.patch("/method/{order_id}", dependencies=[Depends(require_order_access)])
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
async def payment_status(order_id: str, ctx: CtxDep, full: OrderAccess) -> PaymentView:
    """Everyone sees provider, status and amount; the payment's details need the order's
    token, its kiosk or an operator."""
    payment = await orders.payment_of(ctx, order_id)
    if full:
        return payment
    return PaymentView.model_validate(
        {k: getattr(payment, k) for k in ("order_id", "provider", "status", "amount")}
    )


@router.post("/cancel/{order_id}", dependencies=[Depends(require_order_access)])
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
async def sandbox_page(
    request: Request, order_id: str, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    """The customer's stand-in wallet: QR of this page, and "Pay" only while payable."""
    _sandbox(container)
    order = await orders.get_order(container.ctx, order_id)
    payable = order["status"] == OrderStatus.PENDING.value and order["expires_at"] > (
        container.ctx.clock()
    )
    url = str(request.url)
    return pages.TemplateResponse(
        request,
        "sandbox.html",
        {"order": order, "payable": payable, "qr": svg(qr_svg(url))},
    )


@router.post(
    "/sandbox/{order_id}/pay",
    response_model=PaymentOutcome,
    responses={303: {"description": "the pay page's form: back to the page"}},
)
async def sandbox_pay(
    request: Request, order_id: str, container: ContainerDep
) -> PaymentOutcome | RedirectResponse:
    """Sends a correctly signed settlement notification through the webhook's own path."""
    provider = _sandbox(container)
    order = await orders.get_order(container.ctx, order_id)
    body = provider.signed_notification(order_id, order["total_amount"], "settlement")
    outcome = await payment_service.receive_notification(container.ctx, provider, {}, body)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        # The pay page's button: show the page again with the order's new state.
        return RedirectResponse(f"/api/payments/sandbox/{quote(order_id)}", status_code=303)
    return PaymentOutcome(order_id=order_id, outcome=outcome.value)
