"""Paths once untested: loops outliving errors, /ready without a database, debug endpoints in
production, a restart resuming queued units, every migration's downgrade."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import (
    MYSQL_ADMIN_URL,
    PG_ADMIN_URL,
    FakeClock,
    _admin,
    _create_database,
    free_port,
    unique,
)
from tests.integration.helpers import (
    add_user,
    api_client,
    api_settings,
    bearer,
    order,
    order_status,
    outbox_rows,
    pay,
    quick_shop,
    rows,
    sandbox,
)
from tests.integration.test_mqtt_intake import device, running
from vendhub.adapters.db.migrate import alembic_config, upgrade
from vendhub.adapters.db.tables import dispenses, machines, metadata
from vendhub.bootstrap import build
from vendhub.entrypoints.api.app import create_app
from vendhub.metrics import Metrics
from vendhub.services import commands
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.workers import payment_jobs, timers
from vendhub.workers.payment_jobs import run_payment_jobs
from vendhub.workers.timers import run_timers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


# --- worker loops --------------------------------------------------------------------------


def failing_first(
    real: Callable[..., Awaitable[None]],
) -> tuple[Callable[..., Awaitable[None]], list[str]]:
    """`real`, except that its first call raises; returns it and a log of the calls."""
    calls: list[str] = []

    async def flaky(*args: Any) -> None:
        calls.append("call")
        if len(calls) == 1:
            raise RuntimeError("the database went away for a moment")
        await real(*args)

    return flaky, calls


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    for _ in range(int(within / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")


async def test_the_timer_loop_outlives_a_failing_pass_and_does_its_work_on_the_next(
    ctx: ServiceContext, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await quick_shop(ctx)
    order_id = await order(ctx, slot=1)
    clock.advance(ctx.tunables.order_ttl_s + 1)
    flaky, calls = failing_first(timers.tick)
    monkeypatch.setattr(timers, "tick", flaky)
    loop = asyncio.create_task(run_timers(ctx, Metrics(), tick_s=0.01))
    try:

        async def expired() -> bool:
            return await order_status(ctx, order_id) == "EXPIRED"

        await until(expired)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert len(calls) >= 2


async def test_the_payment_jobs_loop_outlives_a_failing_pass_and_refunds_on_the_next(
    ctx: ServiceContext, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await quick_shop(ctx)
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(machines).values(status="ONLINE"))
    order_id = await order(ctx, slot=1)
    assert await pay(ctx, order_id, 8000) == "paid"
    clock.advance(ctx.tunables.command_ttl_s + 60)
    assert await commands.give_up_due(ctx) == 1
    flaky, calls = failing_first(payment_jobs.tick)
    monkeypatch.setattr(payment_jobs, "tick", flaky)
    loop = asyncio.create_task(run_payment_jobs(ctx, sandbox(), PaymentPolicy(), 0.01))
    try:

        async def refunded() -> bool:
            return await order_status(ctx, order_id) == "REFUNDED"

        await until(refunded)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert len(calls) >= 2


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_outbox_publisher_and_the_intake_outlive_errors_over_the_broker(
    engine: AsyncEngine,
    database_urls: dict[str, str],
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from vendhub.services import commands as command_service
    from vendhub.services import fleet

    pending, pending_calls = failing_first_returning(command_service.pending)
    monkeypatch.setattr(command_service, "pending", pending)
    status, status_calls = failing_first(fleet.apply_status)
    monkeypatch.setattr(fleet, "apply_status", status)
    prefix = unique("t")
    async with device(prefix) as dev, running(database_urls[backend], prefix) as container:
        ctx = container.ctx
        # The first status fails to apply; the event worker goes on with the next.
        await dev.publish("status", {"status": "MAINTENANCE"})

        async def tried() -> bool:
            return len(status_calls) == 1

        await until(tried)
        await dev.publish("status", {"status": "ONLINE"})

        async def online() -> bool:
            [machine] = await rows(ctx, machines)
            return bool(machine["status"] == "ONLINE")

        await until(online)
        assert len(status_calls) == 2
        # The publisher's first pass failed; the command still goes out.
        order_id = await order(ctx, slot=1)
        assert await pay(ctx, order_id, 8000) == "paid"
        command = await dev.next_command("dispense")
        assert command["orderId"] == order_id
        assert len(pending_calls) >= 2
    # Both failures are logged with what failed and the exception, for the operator.
    errors = [
        (r.name, r.getMessage(), r.exc_info is not None)
        for r in caplog.records
        if r.levelno >= logging.ERROR
    ]
    assert ("vendhub.workers.intake", "failed to apply status from VM01", True) in errors
    assert ("vendhub.workers.publisher", "outbox pass failed; retrying", True) in errors


def failing_first_returning(
    real: Callable[..., Awaitable[Any]],
) -> tuple[Callable[..., Awaitable[Any]], list[str]]:
    calls: list[str] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append("call")
        if len(calls) == 1:
            raise RuntimeError("the database went away for a moment")
        return await real(*args, **kwargs)

    return flaky, calls


# --- /ready ----------------------------------------------------------------------------------


async def test_ready_is_503_naming_the_database_when_it_is_unreachable(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    unreachable = {
        "sqlite": f"sqlite:///{Path('/nonexistent') / unique('dir')}/gone.db",
        "postgresql": f"postgresql://postgres@127.0.0.1:{free_port()}/gone",
        "mysql": f"mysql://root@127.0.0.1:{free_port()}/gone",
    }[backend]
    container = build(api_settings(unreachable))
    app = create_app(container=container, workers=False)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/ready")
    finally:
        await container.stop()
    assert response.status_code == 503
    assert response.json() == {"ready": False, "database": False, "mqtt": False}
    # The same app on a live database reports it up (only MQTT, not running here, is down).
    async with api_client(database_urls[backend]) as (client, _):
        live = await client.get("/ready")
    assert (live.status_code, live.json()) == (
        503,
        {"ready": False, "database": True, "mqtt": False},
    )


# --- debug endpoints in production ----------------------------------------------------------

PRODUCTION = {
    "app_env": "production",
    "admin_password": "a-long-admin-password-for-tests",
    "payment_provider": "midtrans",
    "mqtt_username": "vendhub-backend",
    "mqtt_password": "broker-password-for-tests",
    "debug_endpoints": True,
}


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_debug_endpoints_in_production_are_for_admins_only(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    async with api_client(database_urls[backend], **PRODUCTION) as (client, container):
        ctx = container.ctx
        tech_id = await add_user(ctx, "tech", "tech-pass-123", "TECHNICIAN")
        admin_id = await add_user(ctx, "boss", "boss-pass-123", "ADMIN")
        url = "/api/debug/mqtt/status"
        assert (await client.get(url)).status_code == 401
        tech = bearer(container, tech_id, "TECHNICIAN", "tech")
        assert (await client.get(url, headers=tech)).status_code == 403
        admin = bearer(container, admin_id, "ADMIN", "boss")
        allowed = await client.get(url, headers=admin)
        assert allowed.status_code == 200, allowed.text
        # Marking an order paid is the dangerous one: refused without an admin.
        refused = await client.post("/api/debug/update-payment/ORD-X", json={"status": "SUCCESS"})
        assert refused.status_code == 401


# --- restart ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_restart_sends_units_left_queued_on_an_idle_machine(
    ctx: ServiceContext, clock: FakeClock, database_urls: dict[str, str], backend: str
) -> None:
    clock.now = datetime.now(UTC)  # the restarted server runs on the real clock
    await quick_shop(ctx)
    order_id = await order(ctx, slot=1, quantity=2)  # placed while the machine was up
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(machines).values(status="OFFLINE"))
    assert await pay(ctx, order_id, 16000) == "paid"
    # Crashed after the machine came back but before anything was dispatched.
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(machines).values(status="ONLINE"))
    assert {u["status"] for u in await rows(ctx, dispenses)} == {"QUEUED"}
    assert await outbox_rows(ctx, "dispense") == []

    prefix = unique("t")
    async with device(prefix) as dev, running(database_urls[backend], prefix, seed=False):
        command = await dev.next_command("dispense")
    assert command["orderId"] == order_id
    units = await rows(ctx, dispenses)
    assert sorted(u["status"] for u in units) == ["IN_FLIGHT", "QUEUED"]
    [in_flight] = [u for u in units if u["status"] == "IN_FLIGHT"]
    assert command["commandId"] == in_flight["id"]


# --- migrations ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_every_migration_downgrades_to_an_empty_database_and_upgrades_again(
    backend: str, tmp_path: Path
) -> None:
    url, drop = _create_database(backend, tmp_path)
    try:
        command.downgrade(alembic_config(url), "base")
        assert _tables(url) <= {"alembic_version"}
        upgrade(url)
        assert _tables(url) >= {t.name for t in metadata.sorted_tables}
    finally:
        if drop:
            admin = PG_ADMIN_URL if backend == "postgresql" else MYSQL_ADMIN_URL
            asyncio.run(_admin(admin, drop))


def _tables(url: str) -> set[str]:
    async def names() -> set[str]:
        from sqlalchemy.ext.asyncio import create_async_engine

        eng = create_async_engine(url)
        try:
            async with eng.connect() as conn:
                return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        finally:
            await eng.dispose()

    return asyncio.run(names())
