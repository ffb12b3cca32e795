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
) -> list[dict[str, Any]]:
    query = sa.select(machines).order_by(machines.c.id)
    if status is not None:
        query = query.where(machines.c.status == status.value)
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings()
        return [dict(r) for r in rows]


async def get_machine(ctx: ServiceContext, machine_id: str) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        row = await first(conn, sa.select(machines).where(machines.c.id == machine_id))
    if row is None:
        raise NotFound(f"machine {machine_id} not found")
    return dict(row)


async def create_machine(ctx: ServiceContext, data: dict[str, Any]) -> dict[str, Any]:
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


async def update_machine(
    ctx: ServiceContext, machine_id: str, data: dict[str, Any]
) -> dict[str, Any]:
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


async def list_slots(ctx: ServiceContext, machine_id: str) -> list[dict[str, Any]]:
    await get_machine(ctx, machine_id)
    stmt = (
        sa.select(slots, products.c.name.label("product_name"), products.c.price.label("price"))
        .outerjoin(products, products.c.id == slots.c.product_id)
        .where(slots.c.machine_id == machine_id)
        .order_by(slots.c.slot_number)
    )
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [
        {
            **r,
            "price": r["price_override"] if r["price_override"] is not None else r["price"],
            "available": _available(r),
        }
        for r in rows
    ]


async def upsert_slot(
    ctx: ServiceContext, machine_id: str, slot_number: int, data: dict[str, Any]
) -> dict[str, Any]:
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
    return next(s for s in await list_slots(ctx, machine_id) if s["slot_number"] == slot_number)


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
) -> list[dict[str, Any]]:
    if machine_id is None:
        async with ctx.engine.connect() as conn:
            rows = await every(
                conn,
                sa.select(products).where(products.c.is_active.is_(True)).order_by(products.c.name),
            )
        return [dict(r) for r in rows]
    result = []
    for s in await list_slots(ctx, machine_id):
        if s["product_id"] is None or not s["is_active"]:
            continue
        if available_only and s["available"] <= 0:
            continue
        result.append(
            {
                "id": s["product_id"],
                "name": s["product_name"],
                "price": s["price"],
                "slot_number": s["slot_number"],
                "slot_id": s["id"],
                "available": s["available"],
                "machine_id": machine_id,
            }
        )
    return result


async def get_product(ctx: ServiceContext, product_id: str) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        row = await first(conn, sa.select(products).where(products.c.id == product_id))
    if row is None:
        raise NotFound(f"product {product_id} not found")
    return dict(row)


async def save_product(
    ctx: ServiceContext, data: dict[str, Any], product_id: str | None = None
) -> dict[str, Any]:
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
