"""Stock per machine: counted, reserved, available; operator updates and the log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from vendhub.entrypoints.api.deps import CtxDep, CurrentUser, StockUser
from vendhub.entrypoints.api.schemas import SlotPublic, StockUpdate
from vendhub.services import catalog, reports
from vendhub.services.stock import update_stock

router = APIRouter(prefix="/api/stock", tags=["stock"])


@router.get("/{machine_id}")
async def get_stock(machine_id: str, ctx: CtxDep, _: CurrentUser) -> list[SlotPublic]:
    return [SlotPublic(**s) for s in await catalog.list_slots(ctx, machine_id)]


@router.post("/update")
async def update(body: StockUpdate, ctx: CtxDep, user: StockUser) -> dict[str, Any]:
    machine_id = body.machine_id or ctx.tunables.default_machine_id
    result = await update_stock(
        ctx,
        machine_id,
        body.slot_number,
        body.change_type,
        quantity_change=body.quantity_change,
        new_stock=body.new_stock,
        reason=body.reason,
        user_id=user["sub"],
    )
    return {"success": True, "machine_id": machine_id, **result}


@router.get("/logs/{machine_id}")
async def logs(
    machine_id: str, ctx: CtxDep, _: CurrentUser, limit: int = Query(default=100, ge=1, le=1000)
) -> list[dict[str, Any]]:
    return await reports.stock_logs_for(ctx, machine_id, limit)
