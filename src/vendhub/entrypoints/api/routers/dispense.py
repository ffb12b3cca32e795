"""Dispensing (the seed's endpoints): trigger, status, logs."""

from __future__ import annotations

from fastapi import APIRouter

from vendhub.entrypoints.api.deps import CtxDep, CurrentUser, TechUser, WindowDep
from vendhub.entrypoints.api.replies import DispenseStatus, DispenseTriggered, Page
from vendhub.entrypoints.api.schemas import DispensePublic, DispenseTrigger
from vendhub.services import dispatch, orders, reports
from vendhub.services.views import DispenseLogView

router = APIRouter(prefix="/api/dispense", tags=["dispense"])


@router.post("/trigger")
async def trigger(body: DispenseTrigger, ctx: CtxDep, _: TechUser) -> DispenseTriggered:
    status = await dispatch.trigger(ctx, body.order_id)
    return DispenseTriggered(order_id=body.order_id, status=status)


@router.get("/status/{order_id}")
async def status(order_id: str, ctx: CtxDep) -> DispenseStatus:
    order = await orders.get_order(ctx, order_id)
    units = [DispensePublic(command_id=d["id"], **d) for d in order["dispenses"]]
    return DispenseStatus(order_id=order_id, status=order["status"], dispenses=units)


@router.get("/logs/{machine_id}")
async def logs(
    machine_id: str, ctx: CtxDep, _: CurrentUser, page: WindowDep
) -> Page[DispenseLogView]:
    return Page[DispenseLogView].of(await reports.dispense_logs(ctx, machine_id, page))
