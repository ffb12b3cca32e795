"""The seed's sample shop: machine VM01 with six stocked slots."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from vendhub.adapters.db.tables import machines, products
from vendhub.services import catalog
from vendhub.services.context import ServiceContext
from vendhub.services.stock import ChangeType, adjust, lock_slot

DEMO_PRODUCTS = [
    ("Coca Cola 330ml", "drink", 8000),
    ("Aqua 600ml", "drink", 5000),
    ("Indomie Goreng", "food", 4500),
    ("Chitato 68g", "snack", 11000),
    ("Teh Botol Sosro", "drink", 6000),
    ("SilverQueen 62g", "snack", 15000),
]


async def seed_demo(ctx: ServiceContext, machine_id: str = "VM01", stock: int = 8) -> bool:
    """Idempotent: does nothing if the machine exists. Returns True when it seeded."""
    if await _exists(ctx, machine_id):
        return False
    product_ids = []
    for name, category, price in DEMO_PRODUCTS:
        product = await catalog.save_product(
            ctx, {"name": name, "category": category, "price": price}
        )
        product_ids.append(str(product.id))
    await _stocked_machine(ctx, machine_id, product_ids, stock)
    return True


async def register_machines(
    ctx: ServiceContext,
    machine_ids: list[str],
    stock: int = 8,
    on_each: Callable[[], None] | None = None,
) -> int:
    """Machines with the demo's six stocked slots, sharing one set of demo products (found by
    name, created if missing). Idempotent: existing machines are left as they are. Returns
    how many were created."""
    product_ids = await _demo_product_ids(ctx)
    created = 0
    for machine_id in machine_ids:
        if not await _exists(ctx, machine_id):
            await _stocked_machine(ctx, machine_id, product_ids, stock)
            created += 1
        if on_each is not None:
            on_each()
    return created


async def _exists(ctx: ServiceContext, machine_id: str) -> bool:
    async with ctx.engine.connect() as conn:
        found = await conn.scalar(sa.select(machines.c.id).where(machines.c.id == machine_id))
    return found is not None


async def _demo_product_ids(ctx: ServiceContext) -> list[str]:
    async with ctx.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(products.c.name, sa.func.min(products.c.id))
            .where(products.c.name.in_([name for name, _, _ in DEMO_PRODUCTS]))
            .group_by(products.c.name)
        )
        found = {str(name): str(product_id) for name, product_id in rows}
    ids = []
    for name, category, price in DEMO_PRODUCTS:
        if name not in found:
            product = await catalog.save_product(
                ctx, {"name": name, "category": category, "price": price}
            )
            found[name] = str(product.id)
        ids.append(found[name])
    return ids


async def _stocked_machine(
    ctx: ServiceContext, machine_id: str, product_ids: list[str], stock: int
) -> None:
    await catalog.create_machine(
        ctx, {"id": machine_id, "name": "Vending Machine Lobby", "location": "Lobby, Jakarta"}
    )
    for number, product_id in enumerate(product_ids, start=1):
        slot = await catalog.upsert_slot(
            ctx,
            machine_id,
            number,
            {"product_id": product_id, "capacity": max(10, stock), "motor_duration_ms": 1500},
        )
        async with ctx.engine.begin() as conn:
            locked = await lock_slot(conn, slot.id)
            await adjust(
                conn,
                locked,
                ChangeType.RESTOCK,
                ctx.clock(),
                quantity_change=stock,
                new_stock=None,
                reason="demo seed",
                user_id=None,
            )
