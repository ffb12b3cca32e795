"""Read-only operator queries: stock, stock logs, telemetry, dispense logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from vendhub.adapters.db.tables import dispenses, stock_logs, telemetry
from vendhub.services.catalog import get_machine
from vendhub.services.context import ServiceContext


async def _rows(ctx: ServiceContext, stmt: sa.Select[Any]) -> list[dict[str, Any]]:
    async with ctx.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]


async def stock_logs_for(ctx: ServiceContext, machine_id: str, limit: int) -> list[dict[str, Any]]:
    await get_machine(ctx, machine_id)
    return await _rows(
        ctx,
        sa.select(stock_logs)
        .where(stock_logs.c.machine_id == machine_id)
        .order_by(stock_logs.c.id.desc())
        .limit(limit),
    )


async def dispense_logs(ctx: ServiceContext, machine_id: str, limit: int) -> list[dict[str, Any]]:
    await get_machine(ctx, machine_id)
    return await _rows(
        ctx,
        sa.select(dispenses)
        .where(dispenses.c.machine_id == machine_id)
        .order_by(dispenses.c.id.desc())
        .limit(limit),
    )


async def telemetry_for(
    ctx: ServiceContext, machine_id: str, since: datetime | None, limit: int
) -> list[dict[str, Any]]:
    await get_machine(ctx, machine_id)
    stmt = sa.select(telemetry).where(telemetry.c.machine_id == machine_id)
    if since is not None:
        stmt = stmt.where(telemetry.c.received_at >= since)
    return await _rows(
        ctx, stmt.order_by(telemetry.c.received_at.desc(), telemetry.c.id.desc()).limit(limit)
    )
