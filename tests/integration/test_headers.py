"""Security headers on every response, CORS only for CORS_ORIGINS, /metrics behind its token."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import _wipe as wipe
from tests.integration.helpers import api_client, assert_error, quick_shop
from vendhub.adapters.db.engine import create_engine

pytestmark = pytest.mark.integration


@pytest.fixture
async def sqlite_url(database_urls: dict[str, str]) -> str:
    url = database_urls["sqlite"]
    engine = create_engine(url)
    await wipe(engine)
    await engine.dispose()
    return url


def assert_secured(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp


async def test_every_kind_of_response_carries_the_security_headers(sqlite_url: str) -> None:
    async with api_client(sqlite_url, rate_limit_orders="1/minute", max_body_bytes=1024) as (
        client,
        _,
    ):
        created = await client.post("/api/orders", json={"slot_number": 1})  # no shop: 404
        responses = [
            await client.get("/health"),
            await client.get("/api/products"),
            created,
            await client.post("/api/orders", json={"slot_number": 1}),  # 429
            await client.post("/api/auth/login", content=b"x" * 2048),  # 413
            await client.get("/api/machines"),  # 401
            await client.get("/nowhere"),  # 404
            await client.get("/docs"),
        ]
        assert [r.status_code for r in responses] == [200, 200, 404, 429, 413, 401, 404, 200]
        for response in responses:
            assert_secured(response)
        # The JSON API and server-rendered pages load only same-origin assets.
        assert responses[0].headers["content-security-policy"].startswith("default-src 'self'")
        assert "cdn" not in responses[1].headers["content-security-policy"]
        # Swagger UI at /docs: its assets are ours (fastapi-offline), only its inline bootstrap
        # script is allowed, and only there.
        docs_csp = responses[-1].headers["content-security-policy"]
        assert "'unsafe-inline'" in docs_csp and "http" not in docs_csp
        assert "'unsafe-inline'" not in responses[0].headers["content-security-policy"]


async def test_the_sandbox_pay_page_is_framed_by_nobody(sqlite_url: str) -> None:
    async with api_client(sqlite_url) as (client, container):
        await quick_shop(container.ctx)
        order_id = (await client.post("/api/orders", json={"slot_number": 1})).json()["order_id"]
        page = await client.get(f"/api/payments/sandbox/{order_id}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert_secured(page)
        assert "form-action 'self'" in page.headers["content-security-policy"]


async def test_cors_answers_only_the_configured_origins(sqlite_url: str) -> None:
    preflight = {
        "Origin": "https://kiosk.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-order-token",
    }
    async with api_client(sqlite_url) as (client, _):
        # No CORS_ORIGINS: no browser origin is allowed.
        plain = await client.get("/api/products", headers={"Origin": "https://kiosk.example"})
        assert "access-control-allow-origin" not in plain.headers
        refused = await client.options("/api/orders", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers
    async with api_client(
        sqlite_url, with_admin=False, cors_origins="https://kiosk.example, https://ops.example"
    ) as (client, _):
        allowed = await client.options("/api/orders", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://kiosk.example"
        assert "x-order-token" in allowed.headers["access-control-allow-headers"].lower()
        assert_secured(allowed)
        evil = await client.get("/api/products", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers
        evil_preflight = await client.options(
            "/api/orders", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert evil_preflight.status_code == 400
        assert "access-control-allow-origin" not in evil_preflight.headers


async def test_metrics_need_the_metrics_token_when_one_is_set(sqlite_url: str) -> None:
    async with api_client(sqlite_url) as (client, _):
        assert (await client.get("/metrics")).status_code == 200
    async with api_client(sqlite_url, with_admin=False, metrics_token="m3trics-t0ken") as (
        client,
        _,
    ):
        assert_error(await client.get("/metrics"), 401, "unauthorized")
        wrong = {"Authorization": "Bearer m3trics-t0kem"}
        assert_error(await client.get("/metrics", headers=wrong), 401)
        right = await client.get("/metrics", headers={"Authorization": "Bearer m3trics-t0ken"})
        assert right.status_code == 200 and "vendhub_" in right.text
