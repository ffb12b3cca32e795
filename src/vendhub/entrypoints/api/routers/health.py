"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vendhub.entrypoints.api.deps import ContainerDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(container: ContainerDep) -> JSONResponse:
    db_ok = True
    try:
        async with container.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception:
        db_ok = False
    mqtt_ok = container.mqtt.connected
    body = {"ready": db_ok and mqtt_ok, "database": db_ok, "mqtt": mqtt_ok}
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics")
async def metrics(container: ContainerDep) -> Response:
    container.metrics.queue_depth.labels("events").set(container.intake.events.qsize())
    return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)
