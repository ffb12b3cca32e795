"""The compatibility tier: the original Node.js clients' requests, replayed from their shapes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import FakeClock, free_port
from tests.integration.helpers import (
    SERVER_KEY,
    add_user,
    api_client,
    api_settings,
    bearer,
    quick_shop,
)
from tests.midtrans_standin import MidtransStandIn, serve
from vendhub.bootstrap import Container, build
from vendhub.entrypoints.api.app import create_app
from vendhub.protocol.messages import DispenseResult
from vendhub.services import results
from vendhub.services.context import ServiceContext

COCA_COLA = 8000  # slot 1 of the demo shop


@dataclass
class Seed:
    """An original client (kiosk, admin, test-order.js) talking to vendhub over HTTP."""

    client: httpx.AsyncClient
    container: Container
    admin: dict[str, str]

    @property
    def ctx(self) -> ServiceContext:
        return self.container.ctx

    async def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> dict[str, Any]:
        response = await self.client.request(method, path, **kw)
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body

    async def machine_result(self, order_id: str, slot: int, dropped: bool = True) -> str:
        """What `node test-mqtt.js simulate ORDER_ID` publishes: no commandId. A real machine
        answers after its motor ran; a commandId-less result sooner than its own durationMs
        after the command is taken for a copy (protocol.md), so wait that long first."""
        await asyncio.sleep(1.9)
        raw = {
            "orderId": order_id,
            "slot": slot,
            "success": dropped,
            "dropDetected": dropped,
            "durationMs": 1850,
        }
        result = DispenseResult.model_validate(raw)
        return (await results.apply_result(self.ctx, "VM01", result, json.dumps(raw))).value


@pytest.fixture
async def seed(
    engine: AsyncEngine, backend: str, database_urls: dict[str, str]
) -> AsyncIterator[Seed]:
    async with api_client(database_urls[backend]) as (client, container):
        # Commands go to the outbox as if the broker were up; no MQTT runs here.
        container.ctx.mqtt_connected = lambda: True
        await quick_shop(container.ctx, stock=5)
        yield Seed(client, container, bearer(container, "user-admin", "SUPER_ADMIN", "admin"))


@dataclass
class Gateway(Seed):
    standin: MidtransStandIn
    clock: FakeClock


@pytest.fixture
async def gateway(
    engine: AsyncEngine, backend: str, database_urls: dict[str, str], clock: FakeClock
) -> AsyncIterator[Gateway]:
    """vendhub on PAYMENT_PROVIDER=midtrans against the local Midtrans stand-in."""
    standin = MidtransStandIn(SERVER_KEY, hang_s=1.0)
    async with serve(standin.app, free_port()) as standin_url:
        standin.url = standin_url
        settings = api_settings(
            database_urls[backend],
            payment_provider="midtrans",
            midtrans_api_base_url=standin_url,
            midtrans_snap_base_url=f"{standin_url}/snap",
            midtrans_timeout_s=0.5,
        )
        container = build(settings)
        admin_id = await add_user(container.ctx, "admin", "admin123", "SUPER_ADMIN")
        admin = bearer(container, admin_id, "SUPER_ADMIN", "admin")
        container.ctx.clock = clock
        container.ctx.mqtt_connected = lambda: True
        await container.start(workers=False)
        await quick_shop(container.ctx, stock=5)
        try:
            app = create_app(container=container, workers=False)
            async with serve(app, free_port()) as app_url:
                standin.webhook_url = f"{app_url}/api/payments/webhook"
                async with httpx.AsyncClient(base_url=app_url) as client:
                    yield Gateway(client, container, admin, standin, clock)
        finally:
            await container.payments.aclose()  # type: ignore[attr-defined]
            await container.stop()
