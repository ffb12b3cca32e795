"""The customer's screen at a machine: product grid, cart, QR payment, live vend progress."""

from __future__ import annotations

from typing import Any

import segno
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from vendhub.entrypoints.api.access import OriginDep, require_order_access
from vendhub.entrypoints.api.deps import ContainerDep
from vendhub.entrypoints.web import i18n
from vendhub.entrypoints.web.render import Pages, product_art, svg
from vendhub.services import catalog, orders, overview, reconcile
from vendhub.services.catalog import MachineStatus
from vendhub.services.checkout import checkout
from vendhub.services.errors import Conflict
from vendhub.services.orders import OrderLine

router = APIRouter(prefix="/kiosk", include_in_schema=False)

# A machine in these states takes no orders: the kiosk shows "out of service".
NOT_SELLING = frozenset({MachineStatus.OFFLINE, MachineStatus.MAINTENANCE})


class CartLine(BaseModel):
    slot_number: int = Field(ge=1, le=1000)
    quantity: int = Field(ge=1, le=20)


class KioskCheckout(BaseModel):
    items: list[CartLine] = Field(min_length=1, max_length=30)
    lang: str = i18n.DEFAULT_LANG


def qr_svg(data: str) -> str:
    """QR as inline SVG, drawn on the server (works offline, sharp at any size)."""
    return str(
        segno.make(data, error="m").svg_inline(scale=8, border=2, dark="#111827", omitsize=True)
    )


@router.get("/{machine_id}", response_class=HTMLResponse)
async def kiosk_page(
    request: Request, machine_id: str, container: ContainerDep, pages: Pages
) -> HTMLResponse:
    lang = i18n.pick(request.query_params.get("lang"))
    machine = await catalog.get_machine(container.ctx, machine_id)
    tiles = [
        {**s.model_dump(), "art": product_art(s.product_name or "", s.category)}
        for s in await catalog.list_slots(container.ctx, machine_id)
        if s.product_id is not None and s.is_active
    ]
    selling = machine.is_active and machine.status not in NOT_SELLING
    return pages.TemplateResponse(
        request,
        "kiosk/kiosk.html",
        {
            "machine": machine,
            "tiles": tiles,
            "selling": selling,
            "t": i18n.TEXTS[lang],
            "lang": lang,
            "other_lang": "en" if lang == "id" else "id",
        },
    )


@router.post("/{machine_id}/orders")
async def kiosk_checkout(
    machine_id: str, body: KioskCheckout, container: ContainerDep, pages: Pages, origin: OriginDep
) -> JSONResponse:
    """The same checkout as the API's, with the same per-client caps (or the kiosk key's one
    open order); OFFLINE/MAINTENANCE machines are refused there (409)."""
    lines = [OrderLine(slot_number=i.slot_number, quantity=i.quantity) for i in body.items]
    order_id = await checkout(
        container.ctx,
        container.payments,
        machine_id,
        lines,
        customer_phone=None,
        payment_method="qris",
        origin=origin.order,
    )
    order = await orders.get_order(container.ctx, order_id)
    payment = order["payment"] or {}
    # QRIS gives a QR string; a Snap-style page is shown as a QR of its URL for a phone.
    qr_data = payment.get("qr_string") or payment.get("redirect_url") or order_id
    lang = i18n.pick(body.lang)
    html = pages.get_template("kiosk/payment.html").render(
        order=order, qr=svg(qr_svg(qr_data)), t=i18n.TEXTS[lang]
    )
    # The token lets this screen (and only it) cancel the order it created.
    return JSONResponse(
        {"order_id": order_id, "access_token": origin.access_token, "html": html, **_public(order)}
    )


def _public(order: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": order["status"],
        "total_amount": order["total_amount"],
        "expires_at": order["expires_at"].isoformat(),
    }


@router.post("/{machine_id}/orders/{order_id}/cancel", dependencies=[Depends(require_order_access)])
async def kiosk_cancel(machine_id: str, order_id: str, container: ContainerDep) -> JSONResponse:
    order = await orders.get_order(container.ctx, order_id)
    if order["machine_id"] != machine_id:
        raise Conflict(f"order {order_id} is not for machine {machine_id}")
    await orders.cancel_order(container.ctx, order_id)
    # Best effort; if the gateway is unreachable the payment jobs keep trying.
    await reconcile.close_at_gateway(
        container.ctx, container.payments, container.payment_policy, order_id
    )
    status = await overview.public_order_status(container.ctx, order_id)
    return JSONResponse(status)
