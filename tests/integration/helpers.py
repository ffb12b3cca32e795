"""Helpers for integration tests: demo shop, paying an order, reading the outbox."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import sqlalchemy as sa

from vendhub.adapters.db.tables import outbox, slots
from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.protocol.messages import DispenseResult
from vendhub.services import payments, results
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.demo import seed_demo
from vendhub.services.orders import OrderLine

SERVER_KEY = "SB-Mid-server-test-key"


def sandbox() -> SandboxProvider:
    return SandboxProvider(SERVER_KEY, "http://127.0.0.1:3001")


async def shop(ctx: ServiceContext, stock: int = 8) -> None:
    await seed_demo(ctx, "VM01", stock=stock)


async def order(ctx: ServiceContext, slot: int = 1, quantity: int = 1) -> str:
    return await checkout(
        ctx,
        sandbox(),
        "VM01",
        [OrderLine(slot_number=slot, quantity=quantity)],
        customer_phone=None,
        payment_method=None,
    )


async def pay(ctx: ServiceContext, order_id: str, amount: int, status: str = "settlement") -> str:
    provider = sandbox()
    body = provider.signed_notification(order_id, amount, status)
    return (await payments.receive_notification(ctx, provider, {}, body)).value


async def outbox_rows(ctx: ServiceContext, kind: str | None = None) -> list[dict[str, Any]]:
    stmt = sa.select(outbox).order_by(outbox.c.id)
    if kind:
        stmt = stmt.where(outbox.c.kind == kind)
    async with ctx.engine.connect() as conn:
        return [
            {**r, "body": json.loads(r["payload"])}
            for r in (await conn.execute(stmt)).mappings().all()
        ]


async def slot_row(ctx: ServiceContext, number: int) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    sa.select(slots).where(
                        slots.c.machine_id == "VM01", slots.c.slot_number == number
                    )
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


async def report(
    ctx: ServiceContext, command: dict[str, Any], dropped: bool = True, error: str | None = None
) -> str:
    result = DispenseResult.model_validate(
        {
            "commandId": command["commandId"],
            "orderId": command["orderId"],
            "slot": command["slot"],
            "success": dropped,
            "dropDetected": dropped,
            "durationMs": 1500,
            "error": error,
        }
    )
    return (await results.apply_result(ctx, "VM01", result, "{}")).value


# --- HTTP API and table helpers (integration tests of payments, results, stock, API) ---

from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402

import httpx  # noqa: E402

JWT_SECRET = "integration-test-jwt-secret-0123456789"


async def count(ctx: ServiceContext, table: sa.Table, *where: Any) -> int:
    async with ctx.engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)))


async def rows(ctx: ServiceContext, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
    key = table.c.id if "id" in table.c else next(iter(table.c))
    async with ctx.engine.connect() as conn:
        result = await conn.execute(sa.select(table).where(*where).order_by(key))
        return [dict(r) for r in result.mappings().all()]


async def order_status(ctx: ServiceContext, order_id: str) -> str:
    from vendhub.adapters.db.tables import orders

    async with ctx.engine.connect() as conn:
        return str(await conn.scalar(sa.select(orders.c.status).where(orders.c.id == order_id)))


def api_settings(database_url: str, **overrides: Any) -> Any:
    from vendhub.config import Settings

    values: dict[str, Any] = {
        "database_url": database_url,
        "mqtt_broker_url": "mqtt://127.0.0.1:1",
        "jwt_secret": JWT_SECRET,
        "app_env": "development",
        "debug_endpoints": True,
        "midtrans_server_key": SERVER_KEY,
        "public_base_url": "http://testserver",
        # Tests make many requests from one address; the limits' own tests set them low.
        "rate_limit_default": "100000/minute",
        "rate_limit_orders": "100000/minute",
        "anon_max_unpaid_units": 100,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


_HASHES: dict[str, str] = {}


async def add_user(ctx: ServiceContext, username: str, password: str, role: str) -> str:
    """A user row with a cached argon2 hash (hashing costs ~0.1 s; tests need many users)."""
    from argon2 import PasswordHasher

    from vendhub.adapters.db.tables import users
    from vendhub.services.ids import new_id

    if password not in _HASHES:
        _HASHES[password] = PasswordHasher().hash(password)
    user_id = new_id()
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.insert(users).values(
                id=user_id,
                username=username,
                password_hash=_HASHES[password],
                role=role,
                created_at=ctx.clock(),
            )
        )
    return user_id


def bearer(container: Any, user_id: str, role: str, username: str = "op") -> dict[str, str]:
    """A token for `user_id`, whose account is created (or given `role`) first: every request
    checks the account, so a token of a user that does not exist is refused."""
    from concurrent.futures import ThreadPoolExecutor

    from vendhub.services import auth

    url = container.settings.resolved_database_url
    with ThreadPoolExecutor(1) as pool:  # called from running event loops: its own loop
        version = pool.submit(asyncio.run, _ensure_user(url, user_id, role, username)).result()
    user = {"id": user_id, "username": username, "role": role, "token_version": version}
    token = auth.issue_token(user, JWT_SECRET, container.ctx, 60)
    return {"Authorization": f"Bearer {token}"}


async def _ensure_user(url: str, user_id: str, role: str, username: str) -> int:
    from datetime import UTC, datetime

    from vendhub.adapters.db.engine import create_engine
    from vendhub.adapters.db.tables import users

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).first()
            if row is not None:
                await conn.execute(sa.update(users).where(users.c.id == user_id).values(role=role))
                return int(row.token_version)
            taken = await conn.scalar(sa.select(users.c.id).where(users.c.username == username))
            await conn.execute(
                sa.insert(users).values(
                    id=user_id,
                    username=user_id if taken else username,
                    password_hash="!unusable",
                    role=role,
                    created_at=datetime.now(UTC),
                )
            )
            return 0
    finally:
        await engine.dispose()


@asynccontextmanager
async def api_client(
    database_url: str, *, with_admin: bool = True, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The real app over ASGI (no lifespan): container started without workers or MQTT."""
    from vendhub.bootstrap import build
    from vendhub.entrypoints.api.app import create_app

    container = build(api_settings(database_url, **overrides))
    if with_admin:
        # Pre-created so start() skips hashing the bootstrap admin's password.
        await add_user(container.ctx, "admin", "admin123", "SUPER_ADMIN")
    await container.start(workers=False)
    app = create_app(container=container, workers=False)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client, container
    finally:
        await container.stop()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape: {"error", "message", "details"?} with the expected status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) <= {"error", "message", "details"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code, body
    return body


async def quick_shop(ctx: ServiceContext, stock: int = 8, machine_id: str = "VM01") -> None:
    """The demo shop's machine, products and slots in one transaction (seed_demo takes ~20)."""
    from vendhub.adapters.db.tables import machines, products
    from vendhub.services.demo import DEMO_PRODUCTS
    from vendhub.services.ids import new_id

    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.insert(machines).values(
                id=machine_id, name=f"Machine {machine_id}", created_at=now, updated_at=now
            )
        )
        for number, (name, category, price) in enumerate(DEMO_PRODUCTS, start=1):
            product_id = new_id()
            await conn.execute(
                sa.insert(products).values(
                    id=product_id,
                    name=name,
                    category=category,
                    price=price,
                    created_at=now,
                    updated_at=now,
                )
            )
            await conn.execute(
                sa.insert(slots).values(
                    id=new_id(),
                    machine_id=machine_id,
                    slot_number=number,
                    product_id=product_id,
                    capacity=10,
                    current_stock=stock,
                    motor_duration_ms=1500,
                    updated_at=now,
                )
            )
