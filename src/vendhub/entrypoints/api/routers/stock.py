"""Stock per machine: counted, reserved, available; operator updates and the log."""

from __future__ import annotations

from fastapi import APIRouter

from vendhub.entrypoints.api.deps import CtxDep, CurrentUser, StockUser, WindowDep
from vendhub.entrypoints.api.replies import Page, StockUpdated
from vendhub.entrypoints.api.schemas import SlotPublic, StockUpdate
from vendhub.services import catalog, reports
from vendhub.services.stock import update_stock
from vendhub.services.views import Slice, StockLogView

router = APIRouter(prefix="/api/stock", tags=["stock"])


@router.get("/{machine_id}")
async def get_stock(
    machine_id: str, ctx: CtxDep, _: CurrentUser, page: WindowDep
) -> Page[SlotPublic]:
    return Page[SlotPublic].of(Slice.cut(await catalog.list_slots(ctx, machine_id), page))


@router.post("/update")
async def update(body: StockUpdate, ctx: CtxDep, user: StockUser) -> StockUpdated:
    """By slot_number (ours) or slot_id + quantity (the seed's); see StockUpdate."""
    machine_id = body.machine_id or ctx.tunables.default_machine_id
    slot_number = await catalog.slot_number_of(ctx, machine_id, body.slot_ref)
    result = await update_stock(
        ctx,
        machine_id,
        slot_number,
        body.change_type,
        quantity_change=body.delta,
        new_stock=body.count,
        reason=body.reason,
        user_id=user["sub"],
    )
    return StockUpdated(machine_id=machine_id, **result)


@router.get("/logs/{machine_id}")
async def logs(machine_id: str, ctx: CtxDep, _: CurrentUser, page: WindowDep) -> Page[StockLogView]:
    return Page[StockLogView].of(await reports.stock_logs_for(ctx, machine_id, page))
