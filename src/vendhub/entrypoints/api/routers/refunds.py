"""Refunds: operators list the refund ledger and decide about refunds held after a late drop."""

from __future__ import annotations

from fastapi import APIRouter

from vendhub.domain.model import RefundStatus
from vendhub.entrypoints.api.deps import AdminUser, ContainerDep, CtxDep, CurrentUser, WindowDep
from vendhub.entrypoints.api.replies import Page, RefundResponse
from vendhub.entrypoints.api.schemas import RefundPublic
from vendhub.services import refunds
from vendhub.services.views import Slice

router = APIRouter(prefix="/api/refunds", tags=["refunds"])


class RefundListed(RefundPublic):
    """A refund in the ledger, with the order it belongs to."""

    order_id: str


@router.get("")
async def list_refunds(
    ctx: CtxDep,
    _: CurrentUser,
    page: WindowDep,
    status: RefundStatus | None = None,
) -> Page[RefundListed]:
    part = await refunds.list_refunds(ctx, status.value if status else None, page)
    listed = [
        RefundListed(order_id=r["order_id"], **RefundPublic(**r).model_dump()) for r in part.items
    ]
    return Page[RefundListed].of(Slice(listed, part.window, part.more))


@router.post("/{refund_id}/release")
async def release(refund_id: str, container: ContainerDep, _: AdminUser) -> RefundResponse:
    """A held refund is paid after all (the customer did not get the item): 409 unless HELD."""
    row = await refunds.release_held(
        container.ctx, container.payments, container.payment_policy, refund_id
    )
    return RefundResponse(success=True, order_id=row["order_id"], refund=RefundPublic(**row))


@router.post("/{refund_id}/cancel")
async def cancel(refund_id: str, container: ContainerDep, _: AdminUser) -> RefundResponse:
    """A held refund is not owed (the unit did drop): 409 unless HELD."""
    row = await refunds.cancel_held(container.ctx, refund_id)
    return RefundResponse(success=True, order_id=row["order_id"], refund=RefundPublic(**row))
