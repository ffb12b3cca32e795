"""Telemetry queries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from vendhub.entrypoints.api.deps import CtxDep, CurrentUser
from vendhub.services import reports, retention
from vendhub.services.errors import InvalidRequest, NotFound

router = APIRouter(prefix="/api/telemetry", tags=["telemetry"])


@router.get("/{machine_id}")
async def telemetry(
    machine_id: str,
    ctx: CtxDep,
    _: CurrentUser,
    since: datetime | None = None,
    limit: int = Query(default=100, ge=1, le=5000),
) -> list[dict[str, Any]]:
    if since is not None and since.tzinfo is None:
        raise InvalidRequest("since must carry a timezone (e.g. 2026-11-27T00:00:00Z)")
    return await reports.telemetry_for(ctx, machine_id, since, limit)


@router.get("/{machine_id}/latest")
async def latest(machine_id: str, ctx: CtxDep, _: CurrentUser) -> dict[str, Any]:
    rows = await reports.telemetry_for(ctx, machine_id, None, 1)
    if not rows:
        raise NotFound(f"no telemetry from machine {machine_id} yet")
    return rows[0]


@router.get("/{machine_id}/hourly")
async def hourly(
    machine_id: str,
    ctx: CtxDep,
    _: CurrentUser,
    since: datetime | None = None,
    limit: int = Query(default=168, ge=1, le=10000),
) -> list[dict[str, Any]]:
    """Hourly min/avg/max, newest first; kept TELEMETRY_ROLLUP_RETENTION_DAYS."""
    if since is not None and since.tzinfo is None:
        raise InvalidRequest("since must carry a timezone (e.g. 2026-11-27T00:00:00Z)")
    return await retention.hourly_for(ctx, machine_id, since, limit)
