"""Machines, slots and products: what operators set up and customers browse."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from vendhub.adapters.db.tables import machines, products, slots
from vendhub.protocol.messages import MachineConfig, PresenceStatus, SlotConfig
from vendhub.protocol.topics import valid_machine_id
from vendhub.services.context import ServiceContext
from vendhub.services.dispatch import lock_machine
from vendhub.services.errors import Conflict, InvalidRequest, NotFound
from vendhub.services.ids import new_id
from vendhub.services.outbox import enqueue
from vendhub.services.rows import every, first
from vendhub.services.views import MachineView, ProductView, SlotView

MACHINE_FIELDS = ("name", "location", "is_active", "telemetry_interval_s")
PRODUCT_FIELDS = ("name", "description", "category", "price", "image_url", "is_active")
SLOT_FIELDS = ("product_id", "capacity", "price_override", "motor_duration_ms", "is_active")


def _available(row: Any) -> int:
    return int(row["current_stock"]) - int(row["reserved"])


class MachineStatus(StrEnum):
    """A machine's presence as stored: what its status topic last said, UNKNOWN before."""

    UNKNOWN = "UNKNOWN"
    ONLINE = PresenceStatus.ONLINE.value
    OFFLINE = PresenceStatus.OFFLINE.value
    MAINTENANCE = PresenceStatus.MAINTENANCE.value


async def list_machines(
    ctx: ServiceContext, status: MachineStatus | None = None
) -> list[MachineView]:
    query = sa.select(machines).order_by(machines.c.id)
    if status is not None:
        query = query.where(machines.c.status == status.value)
    async with ctx.engine.connect() as conn:
        rows = await every(conn, query)
    return [MachineView.model_validate(r) for r in rows]


async def get_machine(ctx: ServiceContext, machine_id: str) -> MachineView:
    async with ctx.engine.connect() as conn:
        row = await first(conn, sa.select(machines).where(machines.c.id == machine_id))
    if row is None:
        raise NotFound(f"machine {machine_id} not found")
    return MachineView.model_validate(row)


async def create_machine(ctx: ServiceContext, data: dict[str, Any]) -> MachineView:
    if not valid_machine_id(data["id"]):
        raise InvalidRequest("machine id must match [A-Za-z0-9_-]{1,50}")
    now = ctx.clock()
    try:
        async with ctx.engine.begin() as conn:
            await conn.execute(
                sa.insert(machines).values(
                    id=data["id"],
                    name=data["name"],
                    location=data.get("location"),
                    telemetry_interval_s=data.get("telemetry_interval_s") or 60,
                    created_at=now,
                    updated_at=now,
                )
            )
    except IntegrityError:
        raise Conflict(f"machine {data['id']} already exists") from None
    return await get_machine(ctx, data["id"])


async def update_machine(ctx: ServiceContext, machine_id: str, data: dict[str, Any]) -> MachineView:
    values = {k: v for k, v in data.items() if k in MACHINE_FIELDS}
    async with ctx.engine.begin() as conn:
        result = await conn.execute(
            sa.update(machines)
            .where(machines.c.id == machine_id)
            .values(**values, updated_at=ctx.clock())
        )
    if result.rowcount != 1:
        raise NotFound(f"machine {machine_id} not found")
    return await get_machine(ctx, machine_id)


async def list_slots(ctx: ServiceContext, machine_id: str) -> list[SlotView]:
    await get_machine(ctx, machine_id)
    stmt = (
        sa.select(
            slots,
            products.c.name.label("product_name"),
            products.c.price.label("price"),
            products.c.description,
            products.c.category,
            products.c.image_url,
        )
        .outerjoin(products, products.c.id == slots.c.product_id)
        .where(slots.c.machine_id == machine_id)
        .order_by(slots.c.slot_number)
    )
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [
        SlotView.model_validate(
            {
                **r,
                "price": r["price_override"] if r["price_override"] is not None else r["price"],
                "available": _available(r),
            }
        )
        for r in rows
    ]


async def upsert_slot(
    ctx: ServiceContext, machine_id: str, slot_number: int, data: dict[str, Any]
) -> SlotView:
    """Create or change a slot's set-up; counted stock changes only through stock updates."""
    await get_machine(ctx, machine_id)
    values = {k: v for k, v in data.items() if k in SLOT_FIELDS}
    now = ctx.clock()
    try:
        async with ctx.engine.begin() as conn:
            if values.get("product_id"):
                await _require_product(conn, values["product_id"])
            existing = await conn.scalar(
                sa.select(slots.c.id).where(
                    slots.c.machine_id == machine_id, slots.c.slot_number == slot_number
                )
            )
            if existing is None:
                await conn.execute(
                    sa.insert(slots).values(
                        id=new_id(),
                        machine_id=machine_id,
                        slot_number=slot_number,
                        updated_at=now,
                        **values,
                    )
                )
            elif values:
                await conn.execute(
                    sa.update(slots).where(slots.c.id == existing).values(updated_at=now, **values)
                )
    except IntegrityError:
        raise Conflict("slot change violates a stock constraint (capacity below stock?)") from None
    return next(s for s in await list_slots(ctx, machine_id) if s.slot_number == slot_number)


async def _require_product(conn: Any, product_id: str) -> None:
    if await conn.scalar(sa.select(products.c.id).where(products.c.id == product_id)) is None:
        raise NotFound(f"product {product_id} not found")


async def push_config(ctx: ServiceContext, machine_id: str) -> MachineConfig:
    """Bump the config version and queue it retained; devices apply only newer versions."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        machine = await lock_machine(conn, machine_id)
        if machine is None:
            raise NotFound(f"machine {machine_id} not found")
        rows = await every(
            conn,
            sa.select(slots).where(slots.c.machine_id == machine_id).order_by(slots.c.slot_number),
        )
        version = machine["config_version"] + 1
        config = MachineConfig(
            version=version,
            machine_id=machine_id,
            telemetry_interval_s=machine["telemetry_interval_s"],
            slots=[
                SlotConfig(
                    slot=r["slot_number"],
                    motor_ms=r["motor_duration_ms"],
                    enabled=bool(r["is_active"]),
                )
                for r in rows
            ],
        )
        await conn.execute(
            sa.update(machines)
            .where(machines.c.id == machine_id)
            .values(config_version=version, updated_at=now)
        )
        await enqueue(conn, ctx.tunables.topic_prefix, machine_id, config, now)
    ctx.wake_outbox()
    return config


async def list_products(
    ctx: ServiceContext, machine_id: str | None = None, available_only: bool = False
) -> list[ProductView]:
    """Active products; with a machine, one entry per active slot holding one (by slot)."""
    if machine_id is None:
        async with ctx.engine.connect() as conn:
            rows = await every(
                conn,
                sa.select(products).where(products.c.is_active.is_(True)).order_by(products.c.name),
            )
        return [ProductView.model_validate(r) for r in rows]
    result = []
    for s in await list_slots(ctx, machine_id):
        if s.product_id is None or s.product_name is None or s.price is None or not s.is_active:
            continue
        if available_only and s.available <= 0:
            continue
        result.append(
            ProductView(
                id=s.product_id,
                name=s.product_name,
                price=s.price,
                description=s.description,
                category=s.category,
                image_url=s.image_url,
                slot_number=s.slot_number,
                slot_id=s.id,
                available=s.available,
                capacity=s.capacity,
                machine_id=machine_id,
            )
        )
    return result


async def get_product(ctx: ServiceContext, product_id: str) -> ProductView:
    async with ctx.engine.connect() as conn:
        row = await first(conn, sa.select(products).where(products.c.id == product_id))
    if row is None:
        raise NotFound(f"product {product_id} not found")
    return ProductView.model_validate(row)


async def save_product(
    ctx: ServiceContext, data: dict[str, Any], product_id: str | None = None
) -> ProductView:
    now = ctx.clock()
    values = {k: v for k, v in data.items() if k in PRODUCT_FIELDS}
    async with ctx.engine.begin() as conn:
        if product_id is None:
            product_id = new_id()
            await conn.execute(
                sa.insert(products).values(id=product_id, created_at=now, updated_at=now, **values)
            )
        else:
            result = await conn.execute(
                sa.update(products)
                .where(products.c.id == product_id)
                .values(updated_at=now, **values)
            )
            if result.rowcount != 1:
                raise NotFound(f"product {product_id} not found")
    return await get_product(ctx, product_id)


async def deactivate_product(ctx: ServiceContext, product_id: str) -> None:
    """Products referenced by past orders are kept; deleting hides them from sale."""
    await save_product(ctx, {"is_active": False}, product_id)


async def assign_slot(
    ctx: ServiceContext,
    machine_id: str,
    slot_ref: str | int,
    product_id: str,
    data: dict[str, Any],
) -> SlotView:
    """The seed's slot assignment: put a product in a slot (by number, or by id)."""
    number = await slot_number_of(ctx, machine_id, slot_ref)
    await _require_product_here(ctx, product_id)
    async with ctx.engine.connect() as conn:
        slot = await first(
            conn,
            sa.select(slots).where(slots.c.machine_id == machine_id, slots.c.slot_number == number),
        )
    if slot is not None and slot["product_id"] != product_id and slot["reserved"] > 0:
        # Open orders hold units of the current product; they must settle first.
        raise Conflict(f"slot {number} has {slot['reserved']} unit(s) reserved by open orders")
    return await upsert_slot(ctx, machine_id, number, {**data, "product_id": product_id})


async def slot_number_of(ctx: ServiceContext, machine_id: str, slot_ref: str | int) -> int:
    if isinstance(slot_ref, int):
        return slot_ref
    async with ctx.engine.connect() as conn:
        number = await conn.scalar(
            sa.select(slots.c.slot_number).where(
                slots.c.machine_id == machine_id, slots.c.id == slot_ref
            )
        )
    if number is not None:
        return int(number)
    if slot_ref.isdigit() and 1 <= int(slot_ref) <= 1000:
        # The seed's numeric slot ids counted 1, 2, 3… per machine.
        return int(slot_ref)
    raise NotFound(f"slot {slot_ref} not found on machine {machine_id}")


async def _require_product_here(ctx: ServiceContext, product_id: str) -> None:
    async with ctx.engine.connect() as conn:
        await _require_product(conn, product_id)
