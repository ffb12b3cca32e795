"""Machines and their slots (operator)."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response

from vendhub.entrypoints.api.deps import AdminUser, CtxDep, CurrentUser, TechUser, WindowDep
from vendhub.entrypoints.api.replies import ConfigPushed, MachineStatusChanged, Page, SlotAssigned
from vendhub.entrypoints.api.schemas import (
    KioskKeyIssued,
    MachineCreate,
    MachineCredentials,
    MachinePublic,
    MachineStatusChange,
    MachineUpdate,
    SlotAssign,
    SlotPublic,
    SlotUpdate,
)
from vendhub.services import broker_credentials, catalog, fleet, kiosk
from vendhub.services.views import Slice

router = APIRouter(prefix="/api/machines", tags=["machines"])
SlotNumber = Path(ge=1, le=1000)


@router.get("")
async def list_machines(
    ctx: CtxDep,
    _: CurrentUser,
    page: WindowDep,
    status: catalog.MachineStatus | None = None,
) -> Page[MachinePublic]:
    return Page[MachinePublic].of(Slice.cut(await catalog.list_machines(ctx, status), page))


@router.post("", status_code=201)
async def create_machine(body: MachineCreate, ctx: CtxDep, _: AdminUser) -> MachinePublic:
    return MachinePublic.of(await catalog.create_machine(ctx, body.model_dump()))


@router.get("/{machine_id}")
async def get_machine(machine_id: str, ctx: CtxDep, _: CurrentUser) -> MachinePublic:
    return MachinePublic.of(await catalog.get_machine(ctx, machine_id))


@router.patch("/{machine_id}")
async def update_machine(
    machine_id: str, body: MachineUpdate, ctx: CtxDep, _: AdminUser
) -> MachinePublic:
    data = body.model_dump(exclude_unset=True)
    return MachinePublic.of(await catalog.update_machine(ctx, machine_id, data))


@router.get("/{machine_id}/slots")
async def list_slots(
    machine_id: str, ctx: CtxDep, _: CurrentUser, page: WindowDep
) -> Page[SlotPublic]:
    return Page[SlotPublic].of(Slice.cut(await catalog.list_slots(ctx, machine_id), page))


@router.put("/{machine_id}/slots/{slot_number}")
async def put_slot(
    machine_id: str,
    body: SlotUpdate,
    ctx: CtxDep,
    _: AdminUser,
    slot_number: int = SlotNumber,
) -> SlotPublic:
    data = body.model_dump(exclude_unset=True)
    return SlotPublic.of(await catalog.upsert_slot(ctx, machine_id, slot_number, data))


@router.post("/{machine_id}/config")
async def push_config(machine_id: str, ctx: CtxDep, _: TechUser) -> ConfigPushed:
    config = await catalog.push_config(ctx, machine_id)
    return ConfigPushed(config=config.model_dump(by_alias=True))


@router.post("/{machine_id}/status")
async def set_status(
    machine_id: str, body: MachineStatusChange, ctx: CtxDep, user: TechUser
) -> MachineStatusChanged:
    """The seed's status switch; the device's own next status message still wins."""
    await fleet.set_status_by_operator(
        ctx, machine_id, body.status, user.get("username"), body.reason
    )
    return MachineStatusChanged(data=MachinePublic.of(await catalog.get_machine(ctx, machine_id)))


@router.post("/{machine_id}/slots/assign")
async def assign_slot(machine_id: str, body: SlotAssign, ctx: CtxDep, _: AdminUser) -> SlotAssigned:
    """The seed's slot assignment: a product (and optionally its set-up) into one slot."""
    data = body.model_dump(exclude_unset=True, exclude={"slot_number", "slot_id", "product_id"})
    slot = await catalog.assign_slot(ctx, machine_id, body.slot_ref, body.product_id, data)
    return SlotAssigned(data=SlotPublic.of(slot))


@router.post("/{machine_id}/credentials")
async def issue_credentials(
    machine_id: str, ctx: CtxDep, _: AdminUser, response: Response
) -> MachineCredentials:
    """Issue or rotate the machine's MQTT password; shown only in this response."""
    issued = await broker_credentials.issue_machine_credentials(ctx, machine_id)
    response.headers["Cache-Control"] = "no-store"
    return MachineCredentials(username=issued.username, password=issued.password)


@router.post("/{machine_id}/kiosk-key", status_code=201)
async def issue_kiosk_key(
    machine_id: str, ctx: CtxDep, _: AdminUser, response: Response
) -> KioskKeyIssued:
    """A new kiosk key for the machine, shown once (send it as X-Kiosk-Key); rotates the old."""
    key = await kiosk.issue_kiosk_key(ctx, machine_id)
    response.headers["Cache-Control"] = "no-store"
    return KioskKeyIssued(machine_id=machine_id, kiosk_key=key)
