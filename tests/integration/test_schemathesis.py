"""Schemathesis over the whole OpenAPI schema, as an operator, on PostgreSQL: never a 5xx."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
import uvicorn
from hypothesis import HealthCheck, settings

from tests.conftest import free_port
from tests.integration.helpers import api_settings, quick_shop
from vendhub.adapters.db.engine import create_engine
from vendhub.adapters.db.tables import metadata
from vendhub.bootstrap import build
from vendhub.entrypoints.api.app import create_app
from vendhub.services.context import ServiceContext

pytestmark = pytest.mark.integration

# Bounded so this file stays well under two minutes in CI (about 45 operations).
EXAMPLES_PER_OPERATION = 15
ADMIN_PASSWORD = "schemathesis-admin-pass"


async def _prepare(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                await conn.execute(table.delete())
        await quick_shop(ServiceContext(engine=engine), stock=5)
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def running_api(database_urls: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    """vendhub on a real port (its own thread and loop) on PostgreSQL; an operator token."""
    url = database_urls["postgresql"]
    asyncio.run(_prepare(url))
    the_settings = api_settings(
        url,
        admin_username="admin",
        admin_password=ADMIN_PASSWORD,
        # The fuzzer is one busy client; the limits have their own tests.
        rate_limit_default="1000000/minute",
        rate_limit_webhook="1000000/minute",
        login_limit_per_username="1000000/minute",
        login_limit_per_client="1000000/minute",
    )
    app = create_app(container=build(the_settings), workers=False)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("vendhub did not start for schemathesis")
        time.sleep(0.05)
    login = httpx.post(
        f"{base}/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert login.status_code == 200, login.text
    try:
        yield base, {"Authorization": f"Bearer {login.json()['token']}"}
    finally:
        server.should_exit = True
        thread.join(timeout=15)


# The schema the app publishes at /openapi.json, taken from an app that never starts (no I/O);
# schemathesis' fixture-based loader does not work with this pytest.
schema = schemathesis.openapi.from_dict(
    create_app(api_settings("sqlite+aiosqlite:///schema-only.db"), workers=False).openapi()
)


def dependency_down(response: Any) -> bool:
    """503 while MQTT is unreachable is the designed answer (no broker runs here), not a bug."""
    if response.status_code != 503:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return body.get("error") == "mqtt_unavailable" or set(body) == {"ready", "database", "mqtt"}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_operation_answers_5xx_to_generated_input(
    case: Any, running_api: tuple[str, dict[str, str]]
) -> None:
    base, operator = running_api
    response = case.call(base_url=base, headers=operator, timeout=30)
    assert response.status_code < 500 or dependency_down(response), (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
    content_type = response.headers.get("content-type") or ""
    if isinstance(content_type, list):  # schemathesis keeps every value of a header
        content_type = content_type[0] if content_type else ""
    if response.status_code >= 400 and content_type.startswith("application/json"):
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            assert set(body) <= {"error", "message", "details"}, body


def test_the_fuzzed_database_still_holds_its_invariants(
    running_api: tuple[str, dict[str, str]], database_urls: dict[str, str]
) -> None:
    """Whatever was thrown at it: stock within its CHECKs, the machine still there."""

    async def check() -> None:
        engine = create_engine(database_urls["postgresql"])
        try:
            async with engine.connect() as conn:
                bad = await conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM slots WHERE reserved > current_stock"
                        " OR current_stock < 0 OR reserved < 0"
                    )
                )
        finally:
            await engine.dispose()
        assert bad == 0

    asyncio.run(check())
