"""Telemetry queries (operators) and the seed's public temperature reading."""

from __future__ import annotations

from fastapi import APIRouter

from vendhub.entrypoints.api.deps import CtxDep, CurrentUser, WindowDep
from vendhub.entrypoints.api.replies import Page, TemperaturePage
from vendhub.entrypoints.api.schemas import SafeDatetime
from vendhub.services import reports, retention
from vendhub.services.errors import InvalidRequest, NotFound
from vendhub.services.views import HourlyView, TelemetryView, Window

router = APIRouter(prefix="/api/telemetry", tags=["telemetry"])
temperature_router = APIRouter(prefix="/api/temperature", tags=["telemetry"])


@router.get("/{machine_id}")
async def telemetry(
    machine_id: str,
    ctx: CtxDep,
    _: CurrentUser,
    page: WindowDep,
    since: SafeDatetime | None = None,
) -> Page[TelemetryView]:
    if since is not None and since.tzinfo is None:
        raise InvalidRequest("since must carry a timezone (e.g. 2026-11-27T00:00:00Z)")
    return Page[TelemetryView].of(await reports.telemetry_for(ctx, machine_id, since, page))


@router.get("/{machine_id}/latest")
async def latest(machine_id: str, ctx: CtxDep, _: CurrentUser) -> TelemetryView:
    part = await reports.telemetry_for(ctx, machine_id, None, Window(limit=1))
    if not part.items:
        raise NotFound(f"no telemetry from machine {machine_id} yet")
    return part.items[0]


@temperature_router.get("/{machine_id}")
async def temperature(machine_id: str, ctx: CtxDep, page: WindowDep) -> TemperaturePage:
    """The seed's temperature endpoint: readings newest first, the latest also at the top."""
    return TemperaturePage.of_readings(
        machine_id, await reports.temperature_for(ctx, machine_id, page)
    )


@router.get("/{machine_id}/hourly")
async def hourly(
    machine_id: str,
    ctx: CtxDep,
    _: CurrentUser,
    page: WindowDep,
    since: SafeDatetime | None = None,
) -> Page[HourlyView]:
    """Hourly min/avg/max, newest first; kept TELEMETRY_ROLLUP_RETENTION_DAYS."""
    if since is not None and since.tzinfo is None:
        raise InvalidRequest("since must carry a timezone (e.g. 2026-11-27T00:00:00Z)")
    return Page[HourlyView].of(await retention.hourly_for(ctx, machine_id, since, page))
