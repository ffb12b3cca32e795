"""Telemetry queries."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from vendhub.entrypoints.api.deps import CtxDep, CurrentUser
from vendhub.entrypoints.api.schemas import SafeDatetime
from vendhub.services import reports
from vendhub.services.errors import InvalidRequest, NotFound

router = APIRouter(prefix="/api/telemetry", tags=["telemetry"])


@router.get("/{machine_id}")
async def telemetry(
    machine_id: str,
    ctx: CtxDep,
    _: CurrentUser,
    since: SafeDatetime | None = None,
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
