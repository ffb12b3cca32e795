"""FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from vendhub import __version__
from vendhub.bootstrap import Container, build
from vendhub.config import Settings
from vendhub.entrypoints.api import errors, security
from vendhub.entrypoints.api.routers import (
    alerts,
    auth,
    debug,
    dispense,
    finance,
    health,
    live,
    machines,
    orders,
    payments,
    products,
    refunds,
    stock,
    telemetry,
)
from vendhub.entrypoints.api.shedding import InflightLimit
from vendhub.entrypoints.web import app as web


def create_app(
    settings: Settings | None = None,
    container: Container | None = None,
    *,
    workers: bool = True,
) -> FastAPI:
    """Build the app; the container's I/O starts in the lifespan, not here."""
    settings = settings or (container.settings if container else Settings())
    the_container = container or build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_container.start(workers=workers)
        try:
            yield
        finally:
            await the_container.stop()

    # Swagger UI and ReDoc assets come from the fastapi-offline package: /docs works offline.
    app = FastAPIOffline(
        title="vendhub",
        version=__version__,
        lifespan=lifespan,
        description="Cashless vending fleet backend: orders, payments, MQTT dispensing.",
    )
    app.state.container = the_container
    app.state.webhook_gate = InflightLimit(
        settings.webhook_max_inflight, settings.webhook_concurrency
    )
    errors.install(app)
    app.state.limits = security.RateLimits(settings)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Order-Token", "X-Kiosk-Key"],
        )
    # Outermost: headers on every response, limits before anything reads the body.
    app.add_middleware(
        security.EdgeGuard, settings=settings, limits=app.state.limits, ctx=the_container.ctx
    )
    for module in (
        health,
        auth,
        machines,
        products,
        orders,
        payments,
        dispense,
        finance,
        stock,
        telemetry,
        debug,
        alerts,
        live,
        refunds,
    ):
        app.include_router(module.router)
    app.include_router(telemetry.temperature_router)
    web.install(app, settings.display_tz)
    return app
