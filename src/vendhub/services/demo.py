"""The seed's sample shop: machine VM01 with six stocked slots."""

from __future__ import annotations

import sqlalchemy as sa

from vendhub.adapters.db.tables import machines
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
    async with ctx.engine.connect() as conn:
        if await conn.scalar(sa.select(machines.c.id).where(machines.c.id == machine_id)):
            return False
    await catalog.create_machine(
        ctx, {"id": machine_id, "name": "Vending Machine Lobby", "location": "Lobby, Jakarta"}
    )
    for number, (name, category, price) in enumerate(DEMO_PRODUCTS, start=1):
        product = await catalog.save_product(
            ctx, {"name": name, "category": category, "price": price}
        )
        slot = await catalog.upsert_slot(
            ctx,
            machine_id,
            number,
            {"product_id": product.id, "capacity": 10, "motor_duration_ms": 1500},
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
    return True
