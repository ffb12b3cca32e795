"""Refunds: operators list the refund ledger and decide about refunds held after a late drop."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from vendhub.domain.model import RefundStatus
from vendhub.entrypoints.api.deps import AdminUser, ContainerDep, CtxDep, CurrentUser
from vendhub.entrypoints.api.schemas import RefundPublic
from vendhub.services import refunds

router = APIRouter(prefix="/api/refunds", tags=["refunds"])


@router.get("")
async def list_refunds(
    ctx: CtxDep,
    _: CurrentUser,
    status: RefundStatus | None = None,
    limit: int = Query(default=50, ge=1, le=500),
) -> list[dict[str, Any]]:
    rows = await refunds.list_refunds(ctx, status.value if status else None, limit)
    return [{"order_id": r["order_id"], **RefundPublic(**r).model_dump()} for r in rows]


@router.post("/{refund_id}/release")
async def release(refund_id: str, container: ContainerDep, _: AdminUser) -> dict[str, Any]:
    """A held refund is paid after all (the customer did not get the item): 409 unless HELD."""
    row = await refunds.release_held(
        container.ctx, container.payments, container.payment_policy, refund_id
    )
    return {"success": True, "order_id": row["order_id"], "refund": RefundPublic(**row)}


@router.post("/{refund_id}/cancel")
async def cancel(refund_id: str, container: ContainerDep, _: AdminUser) -> dict[str, Any]:
    """A held refund is not owed (the unit did drop): 409 unless HELD."""
    row = await refunds.cancel_held(container.ctx, refund_id)
    return {"success": True, "order_id": row["order_id"], "refund": RefundPublic(**row)}
