"""Helpers for integration tests: demo shop, paying an order, reading the outbox."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from vendhub.adapters.db.tables import outbox, slots
from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.protocol.messages import DispenseResult
from vendhub.services import payments, results
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.demo import seed_demo
from vendhub.services.orders import OrderLine

SERVER_KEY = "SB-Mid-server-test-key"


def sandbox() -> SandboxProvider:
    return SandboxProvider(SERVER_KEY, "http://127.0.0.1:3001")


async def shop(ctx: ServiceContext, stock: int = 8) -> None:
    await seed_demo(ctx, "VM01", stock=stock)


async def order(ctx: ServiceContext, slot: int = 1, quantity: int = 1) -> str:
    return await checkout(ctx, sandbox(), "VM01", [OrderLine(slot_number=slot, quantity=quantity)],
                          customer_phone=None, payment_method=None)


async def pay(ctx: ServiceContext, order_id: str, amount: int, status: str = "settlement") -> str:
    provider = sandbox()
    body = provider.signed_notification(order_id, amount, status)
    return (await payments.receive_notification(ctx, provider, {}, body)).value


async def outbox_rows(ctx: ServiceContext, kind: str | None = None) -> list[dict[str, Any]]:
    stmt = sa.select(outbox).order_by(outbox.c.id)
    if kind:
        stmt = stmt.where(outbox.c.kind == kind)
    async with ctx.engine.connect() as conn:
        return [{**r, "body": json.loads(r["payload"])}
                for r in (await conn.execute(stmt)).mappings().all()]


async def slot_row(ctx: ServiceContext, number: int) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        row = (await conn.execute(sa.select(slots).where(slots.c.machine_id == "VM01",
                                                         slots.c.slot_number == number))
               ).mappings().one()
    return dict(row)


async def report(ctx: ServiceContext, command: dict[str, Any], dropped: bool = True,
                 error: str | None = None) -> str:
    result = DispenseResult.model_validate({
        "commandId": command["commandId"], "orderId": command["orderId"], "slot": command["slot"],
        "success": dropped, "dropDetected": dropped, "durationMs": 1500, "error": error})
    return (await results.apply_result(ctx, "VM01", result, "{}")).value
