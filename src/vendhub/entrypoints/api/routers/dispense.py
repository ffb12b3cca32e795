"""Dispensing (the seed's endpoints): trigger, status, logs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from vendhub.entrypoints.api.deps import CtxDep, CurrentUser, TechUser
from vendhub.entrypoints.api.schemas import DispensePublic, DispenseTrigger
from vendhub.services import dispatch, orders, reports

router = APIRouter(prefix="/api/dispense", tags=["dispense"])


@router.post("/trigger")
async def trigger(body: DispenseTrigger, ctx: CtxDep, _: TechUser) -> dict[str, Any]:
    status = await dispatch.trigger(ctx, body.order_id)
    return {"success": True, "order_id": body.order_id, "status": status}


@router.get("/status/{order_id}")
async def status(order_id: str, ctx: CtxDep) -> dict[str, Any]:
    order = await orders.get_order(ctx, order_id)
    units = [DispensePublic(command_id=d["id"], **d) for d in order["dispenses"]]
    return {
        "order_id": order_id,
        "status": order["status"],
        "dispenses": [u.model_dump() for u in units],
    }


@router.get("/logs/{machine_id}")
async def logs(
    machine_id: str, ctx: CtxDep, _: CurrentUser, limit: int = Query(default=100, ge=1, le=1000)
) -> list[dict[str, Any]]:
    return [
        {"command_id": r.pop("id"), **r}
        for r in await reports.dispense_logs(ctx, machine_id, limit)
    ]
