"""Read-only operator queries: stock, stock logs, telemetry, dispense logs, orders per machine."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from vendhub.adapters.db.tables import dispenses, stock_logs, telemetry
from vendhub.services.catalog import get_machine
from vendhub.services.context import ServiceContext
from vendhub.services.views import (
    DispenseLogView,
    Slice,
    StockLogView,
    TelemetryView,
    TemperatureView,
    Window,
)


async def _rows(ctx: ServiceContext, stmt: sa.Select[Any], window: Window) -> list[Any]:
    async with ctx.engine.connect() as conn:
        return list((await conn.execute(window.apply(stmt))).mappings().all())


async def stock_logs_for(
    ctx: ServiceContext, machine_id: str, window: Window
) -> Slice[StockLogView]:
    await get_machine(ctx, machine_id)
    rows = await _rows(
        ctx,
        sa.select(stock_logs)
        .where(stock_logs.c.machine_id == machine_id)
        .order_by(stock_logs.c.id.desc()),
        window,
    )
    return Slice.of([StockLogView.model_validate(r) for r in rows], window)


async def dispense_logs(
    ctx: ServiceContext, machine_id: str, window: Window
) -> Slice[DispenseLogView]:
    await get_machine(ctx, machine_id)
    rows = await _rows(
        ctx,
        sa.select(dispenses, dispenses.c.id.label("command_id"))
        .where(dispenses.c.machine_id == machine_id)
        .order_by(dispenses.c.created_at.desc(), dispenses.c.id.desc()),
        window,
    )
    return Slice.of([DispenseLogView.model_validate(r) for r in rows], window)


async def telemetry_for(
    ctx: ServiceContext, machine_id: str, since: datetime | None, window: Window
) -> Slice[TelemetryView]:
    await get_machine(ctx, machine_id)
    stmt = sa.select(telemetry).where(telemetry.c.machine_id == machine_id)
    if since is not None:
        stmt = stmt.where(telemetry.c.received_at >= since)
    rows = await _rows(
        ctx, stmt.order_by(telemetry.c.received_at.desc(), telemetry.c.id.desc()), window
    )
    return Slice.of([TelemetryView.model_validate(r) for r in rows], window)


async def temperature_for(
    ctx: ServiceContext, machine_id: str, window: Window
) -> Slice[TemperatureView]:
    """Readings that carry a temperature; nothing else a telemetry row holds."""
    await get_machine(ctx, machine_id)
    rows = await _rows(
        ctx,
        sa.select(
            telemetry.c.temperature,
            telemetry.c.humidity,
            telemetry.c.received_at.label("recorded_at"),
        )
        .where(telemetry.c.machine_id == machine_id, telemetry.c.temperature.is_not(None))
        .order_by(telemetry.c.received_at.desc(), telemetry.c.id.desc()),
        window,
    )
    return Slice.of([TemperatureView.model_validate(r) for r in rows], window)
