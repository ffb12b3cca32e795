"""FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi_offline import FastAPIOffline

from vendhub import __version__
from vendhub.bootstrap import Container, build
from vendhub.config import Settings
from vendhub.entrypoints.api import errors
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
    _limit_body_size(app, settings.max_body_bytes)
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


def _limit_body_size(app: FastAPI, limit: int) -> None:
    @app.middleware("http")
    async def check(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return errors.error_response(
                413, "payload_too_large", f"request body larger than {limit} bytes"
            )
        return await call_next(request)
