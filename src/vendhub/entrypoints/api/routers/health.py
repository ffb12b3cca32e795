"""Liveness, readiness and metrics."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vendhub.domain.model import OrderStatus, UnitStatus
from vendhub.entrypoints.api.deps import ContainerDep
from vendhub.entrypoints.api.replies import Health, Readiness
from vendhub.services import stats

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> Health:
    return Health()


@router.get(
    "/ready", response_model=Readiness, responses={503: {"model": Readiness, "description": "down"}}
)
async def ready(container: ContainerDep) -> JSONResponse:
    db_ok = True
    try:
        async with container.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception:
        db_ok = False
    mqtt_ok = container.mqtt.connected
    body = Readiness(ready=db_ok and mqtt_ok, database=db_ok, mqtt=mqtt_ok)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(container: ContainerDep) -> Response:
    m = container.metrics
    m.queue_depth.labels("events").set(container.intake.events_waiting())
    m.queue_depth.labels("telemetry").set(container.intake.telemetry_backlog())
    counts = await stats.snapshot(container.ctx)
    for state in UnitStatus:
        m.commands_by_state.labels(state.value).set(counts["units"].get(state.value, 0))
    for status in OrderStatus:
        m.orders_by_status.labels(status.value).set(counts["orders"].get(status.value, 0))
    m.outbox_pending.set(counts["outbox"]["pending"])
    return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)
