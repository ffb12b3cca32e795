"""Machines and their slots (operator)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from vendhub.entrypoints.api.deps import AdminUser, CtxDep, CurrentUser, TechUser
from vendhub.entrypoints.api.schemas import (
    MachineCreate,
    MachinePublic,
    MachineUpdate,
    SlotPublic,
    SlotUpdate,
)
from vendhub.services import catalog, kiosk

router = APIRouter(prefix="/api/machines", tags=["machines"])
SlotNumber = Path(ge=1, le=1000)


@router.get("")
async def list_machines(ctx: CtxDep, _: CurrentUser) -> list[MachinePublic]:
    return [MachinePublic(**m) for m in await catalog.list_machines(ctx)]


@router.post("", status_code=201)
async def create_machine(body: MachineCreate, ctx: CtxDep, _: AdminUser) -> MachinePublic:
    return MachinePublic(**await catalog.create_machine(ctx, body.model_dump()))


@router.get("/{machine_id}")
async def get_machine(machine_id: str, ctx: CtxDep, _: CurrentUser) -> MachinePublic:
    return MachinePublic(**await catalog.get_machine(ctx, machine_id))


@router.patch("/{machine_id}")
async def update_machine(
    machine_id: str, body: MachineUpdate, ctx: CtxDep, _: AdminUser
) -> MachinePublic:
    data = body.model_dump(exclude_unset=True)
    return MachinePublic(**await catalog.update_machine(ctx, machine_id, data))


@router.get("/{machine_id}/slots")
async def list_slots(machine_id: str, ctx: CtxDep, _: CurrentUser) -> list[SlotPublic]:
    return [SlotPublic(**s) for s in await catalog.list_slots(ctx, machine_id)]


@router.put("/{machine_id}/slots/{slot_number}")
async def put_slot(
    machine_id: str,
    body: SlotUpdate,
    ctx: CtxDep,
    _: AdminUser,
    slot_number: int = SlotNumber,
) -> SlotPublic:
    data = body.model_dump(exclude_unset=True)
    return SlotPublic(**await catalog.upsert_slot(ctx, machine_id, slot_number, data))


@router.post("/{machine_id}/config")
async def push_config(machine_id: str, ctx: CtxDep, _: TechUser) -> dict[str, Any]:
    config = await catalog.push_config(ctx, machine_id)
    return {"success": True, "config": config.model_dump(by_alias=True)}


@router.post("/{machine_id}/kiosk-key", status_code=201)
async def issue_kiosk_key(machine_id: str, ctx: CtxDep, _: AdminUser) -> dict[str, Any]:
    """A new kiosk key for the machine, shown once (send it as X-Kiosk-Key); rotates the old."""
    key = await kiosk.issue_kiosk_key(ctx, machine_id)
    return {"machine_id": machine_id, "kiosk_key": key, "header": "X-Kiosk-Key"}
