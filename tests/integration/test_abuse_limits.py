"""Public endpoints under abuse: rate limits, unpaid-unit caps, order tokens, kiosk keys."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import _wipe as wipe
from tests.integration.helpers import api_client, assert_error, bearer, pay, quick_shop, slot_row
from vendhub.adapters.db.engine import create_engine
from vendhub.adapters.db.tables import machines, orders

pytestmark = pytest.mark.integration

COCA_COLA = 8000


@asynccontextmanager
async def edge(
    url: str, shop: bool = True, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app on `url`; with the demo shop unless a previous app in the test made it."""
    async with api_client(url, with_admin=shop, **overrides) as (client, container):
        if shop:
            await quick_shop(container.ctx, stock=8)
        yield client, container


@pytest.fixture
async def sqlite_url(database_urls: dict[str, str]) -> str:
    """An emptied SQLite database, for what does not depend on the database."""
    url = database_urls["sqlite"]
    engine = create_engine(url)
    await wipe(engine)
    await engine.dispose()
    return url


def from_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def test_order_creation_is_rate_limited_per_client_with_retry_after(
    sqlite_url: str,
) -> None:
    async with edge(sqlite_url, rate_limit_orders="3/minute") as (client, _):
        for _ in range(3):
            assert (await client.post("/api/orders", json={"slot_number": 1})).status_code == 201
        refused = await client.post("/api/orders", json={"slot_number": 2})
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # Read-only public endpoints stay under the (larger) default limit.
        assert (await client.get("/api/products")).status_code == 200


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    sqlite_url: str,
) -> None:
    url = sqlite_url
    async with edge(url, rate_limit_orders="2/minute") as (client, _):
        # The peer (127.0.0.1) is not a trusted proxy: a forged header buys no new bucket.
        for n in range(2):
            response = await client.post(
                "/api/orders", json={"slot_number": 1}, headers=from_ip(f"10.9.9.{n}")
            )
            assert response.status_code == 201
        forged = await client.post(
            "/api/orders", json={"slot_number": 1}, headers=from_ip("1.2.3.4")
        )
        assert_error(forged, 429, "rate_limited")
    async with edge(url, False, rate_limit_orders="2/minute", trusted_proxies="127.0.0.0/8") as (
        client,
        _,
    ):
        for _ in range(2):
            ok = await client.post(
                "/api/orders", json={"slot_number": 1}, headers=from_ip("10.0.0.1")
            )
            assert ok.status_code == 201
        limited = await client.post(
            "/api/orders", json={"slot_number": 1}, headers=from_ip("10.0.0.1")
        )
        assert_error(limited, 429)
        # Behind the proxy, another customer is another client; the hop the proxy appended
        # (the right-most untrusted address) is the one that counts, not what the client wrote.
        other = await client.post(
            "/api/orders", json={"slot_number": 1}, headers=from_ip("10.0.0.1, 10.0.0.2")
        )
        assert other.status_code == 201


async def test_rate_limits_are_shared_by_replicas_through_redis(
    sqlite_url: str,
) -> None:
    url = sqlite_url
    settings = {
        "rate_limit_orders": "3/minute",
        "redis_url": "redis://127.0.0.1:6379/0",
        "trusted_proxies": "127.0.0.0/8",
    }
    # A fresh client address per run: Redis outlives the test.
    client_ip = f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    async with edge(url, **settings) as (first, _):
        for _ in range(2):
            response = await first.post(
                "/api/orders", json={"slot_number": 1}, headers=from_ip(client_ip)
            )
            assert response.status_code == 201
    async with edge(url, False, **settings) as (second, _):
        assert (
            await second.post("/api/orders", json={"slot_number": 1}, headers=from_ip(client_ip))
        ).status_code == 201
        refused = await second.post(
            "/api/orders", json={"slot_number": 1}, headers=from_ip(client_ip)
        )
        assert_error(refused, 429, "rate_limited")


async def test_one_anonymous_client_cannot_reserve_a_whole_machine(
    backend: str, engine: Any, database_urls: dict[str, str]
) -> None:
    async with edge(
        database_urls[backend], anon_max_unpaid_units=2, trusted_proxies="127.0.0.0/8"
    ) as (client, container):
        grab = {"items": [{"slot_number": 1, "quantity": 8}]}
        assert_error(await client.post("/api/orders/multi", json=grab), 429, "rate_limited")
        first = await client.post("/api/orders", json={"slot_number": 1, "quantity": 2})
        assert first.status_code == 201, first.text
        refused = await client.post("/api/orders", json={"slot_number": 2})
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await slot_row(container.ctx, 2))["reserved"] == 0
        # Another customer (behind the trusted proxy) is not affected.
        other = await client.post(
            "/api/orders", json={"slot_number": 2}, headers=from_ip("10.1.1.1")
        )
        assert other.status_code == 201
        # Paying or cancelling frees the client's allowance.
        token = {"X-Order-Token": first.json()["access_token"]}
        cancel = await client.post(
            f"/api/payments/cancel/{first.json()['order_id']}", headers=token
        )
        assert cancel.status_code == 200
        again = await client.post("/api/orders", json={"slot_number": 1, "quantity": 2})
        assert again.status_code == 201
        assert await pay(container.ctx, again.json()["order_id"], 2 * COCA_COLA) == "paid"
        assert (await client.post("/api/orders", json={"slot_number": 3})).status_code == 201


async def test_concurrent_orders_of_one_client_never_exceed_the_cap(
    backend: str, engine: Any, database_urls: dict[str, str]
) -> None:
    async with edge(database_urls[backend], anon_max_unpaid_units=2) as (client, container):
        responses = await asyncio.gather(
            *(client.post("/api/orders", json={"slot_number": 1 + n % 3}) for n in range(6))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes.count(201) == 2, [r.text for r in responses]
        assert set(codes) <= {201, 429, 409}
        async with container.engine.connect() as conn:
            pending = await conn.scalar(
                sa.select(sa.func.count()).select_from(orders).where(orders.c.status == "PENDING")
            )
        assert pending == 2


@pytest.mark.parametrize("status", ["OFFLINE", "MAINTENANCE"])
async def test_orders_for_an_offline_or_maintenance_machine_are_409(
    status: str, backend: str, engine: Any, database_urls: dict[str, str]
) -> None:
    async with edge(database_urls[backend]) as (client, container):
        async with container.engine.begin() as conn:
            await conn.execute(sa.update(machines).values(status=status))
        refused = await client.post("/api/orders", json={"slot_number": 1})
        assert_error(refused, 409, "conflict")
        assert status in refused.json()["message"]
        assert (await slot_row(container.ctx, 1))["reserved"] == 0


async def test_cancelling_or_reading_an_order_needs_its_token_unless_operator(
    backend: str, engine: Any, database_urls: dict[str, str]
) -> None:
    async with edge(database_urls[backend]) as (client, container):
        created = await client.post(
            "/api/orders", json={"slot_number": 1, "customer_phone": "+62811000111"}
        )
        assert created.status_code == 201
        body = created.json()
        order_id, token = body["order_id"], body["access_token"]
        assert isinstance(token, str) and len(token) >= 32
        async with container.engine.connect() as conn:
            stored = await conn.scalar(
                sa.select(orders.c.access_token_hash).where(orders.c.id == order_id)
            )
        assert stored and token not in stored  # only a hash is kept

        # Someone who only knows (or guessed) the id: cannot cancel, sees the status only.
        assert_error(await client.post(f"/api/payments/cancel/{order_id}"), 401, "unauthorized")
        wrong = {"X-Order-Token": "x" * 32}
        denied = await client.post(f"/api/payments/cancel/{order_id}", headers=wrong)
        assert_error(denied, 403, "forbidden")
        public = (await client.get(f"/api/orders/{order_id}")).json()
        assert (public["order_id"], public["status"], public["total_amount"]) == (
            order_id,
            "PENDING",
            COCA_COLA,
        )
        assert public["refunds"] == [] and public.get("access_token") is None
        assert public["payment"] is None and public["payment_status"] == "PENDING"
        assert public["customer_phone"] is None and public["paid_amount"] is None
        assert "+62811000111" not in (await client.get(f"/api/orders/{order_id}")).text
        bare = (await client.get(f"/api/payments/{order_id}")).json()
        shown = {k for k, v in bare.items() if v is not None}
        assert shown == {"order_id", "provider", "status", "amount"}

        # The token holder (header or ?token=) sees the details and may cancel.
        full = (await client.get(f"/api/orders/{order_id}", params={"token": token})).json()
        assert full["payment"]["redirect_url"]
        paid_view = (
            await client.get(f"/api/payments/{order_id}", headers={"X-Order-Token": token})
        ).json()
        assert "redirect_url" in paid_view
        cancel = await client.post(
            f"/api/payments/cancel/{order_id}", headers={"X-Order-Token": token}
        )
        assert cancel.status_code == 200 and cancel.json()["status"] == "CANCELLED"

        # An operator always can.
        other = (await client.post("/api/orders", json={"slot_number": 2})).json()["order_id"]
        admin = bearer(container, "user-admin", "ADMIN", "admin2")
        assert (await client.get(f"/api/orders/{other}", headers=admin)).json()["payment"][
            "redirect_url"
        ]
        by_operator = await client.post(f"/api/payments/cancel/{other}", headers=admin)
        assert by_operator.status_code == 200


async def test_kiosk_key_exempts_from_caps_but_holds_one_open_order(
    backend: str, engine: Any, database_urls: dict[str, str]
) -> None:
    async with edge(
        database_urls[backend], anon_max_unpaid_units=1, rate_limit_orders="2/minute"
    ) as (client, container):
        await quick_shop(container.ctx, machine_id="VM02")
        tech = bearer(container, "user-tech", "TECHNICIAN", "tech")
        admin = bearer(container, "user-admin", "ADMIN", "admin2")
        assert_error(await client.post("/api/machines/VM01/kiosk-key", headers=tech), 403)
        assert_error(await client.post("/api/machines/VM01/kiosk-key"), 401)
        assert_error(await client.post("/api/machines/NOPE/kiosk-key", headers=admin), 404)
        issued = await client.post("/api/machines/VM01/kiosk-key", headers=admin)
        assert issued.status_code == 201
        key = issued.json()["kiosk_key"]
        async with container.engine.connect() as conn:
            stored = await conn.scalar(
                sa.select(machines.c.kiosk_key_hash).where(machines.c.id == "VM01")
            )
        assert stored and key not in stored
        kiosk = {"X-Kiosk-Key": key}

        # Exempt from the anonymous cap (1 unit) and the order rate (2/minute)...
        for _ in range(3):
            created = await client.post(
                "/api/orders", json={"slot_number": 1, "quantity": 3}, headers=kiosk
            )
            assert created.status_code == 201, created.text
            order_id = created.json()["order_id"]
            # ...but one open order at a time.
            second = await client.post("/api/orders", json={"slot_number": 2}, headers=kiosk)
            assert_error(second, 409, "conflict")
            # The kiosk may read and cancel its machine's orders without the order token.
            view = (await client.get(f"/api/orders/{order_id}", headers=kiosk)).json()
            assert view["payment"]["redirect_url"]
            cancel = await client.post(f"/api/payments/cancel/{order_id}", headers=kiosk)
            assert cancel.status_code == 200

        # Its key is for VM01 only; a wrong key is refused; rotation retires the old key.
        other_machine = {"machine_id": "VM02", "slot_number": 1}
        assert_error(await client.post("/api/orders", json=other_machine, headers=kiosk), 403)
        bad = {"X-Kiosk-Key": "kk_not-a-key"}
        assert_error(await client.post("/api/orders", json={"slot_number": 1}, headers=bad), 401)
        rotated = await client.post("/api/machines/VM01/kiosk-key", headers=admin)
        assert rotated.json()["kiosk_key"] != key
        old = await client.post("/api/orders", json={"slot_number": 1}, headers=kiosk)
        assert_error(old, 401)


async def test_every_public_endpoint_shares_the_default_per_client_limit(sqlite_url: str) -> None:
    async with edge(sqlite_url, rate_limit_default="5/minute") as (client, _):
        for path in ("/api/products", "/api/products/available", "/api/orders/NOPE") * 2:
            response = await client.get(path)
            if response.status_code == 429:
                break
        assert_error(response, 429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
        # Liveness, readiness and metrics are never limited (probes and scrapers poll them).
        for _ in range(10):
            assert (await client.get("/health")).status_code == 200


async def test_the_kiosk_screen_obeys_the_same_cap_and_cancels_only_with_its_token(
    backend: str, engine: Any, database_urls: dict[str, str]
) -> None:
    async with edge(database_urls[backend], anon_max_unpaid_units=2) as (client, container):
        cart = {"items": [{"slot_number": 1, "quantity": 2}]}
        made = await client.post("/kiosk/VM01/orders", json=cart)
        assert made.status_code == 200, made.text
        order_id, token = made.json()["order_id"], made.json()["access_token"]
        # The kiosk page is one more anonymous client: past the cap it is refused, untouched.
        more = {"items": [{"slot_number": 3, "quantity": 1}]}
        assert_error(await client.post("/kiosk/VM01/orders", json=more), 429)
        assert (await slot_row(container.ctx, 3))["reserved"] == 0
        url = f"/kiosk/VM01/orders/{order_id}/cancel"
        assert_error(await client.post(url), 401)
        assert_error(await client.post(url, headers={"X-Order-Token": "x" * 32}), 403)
        assert (await slot_row(container.ctx, 1))["reserved"] == 2
        cancelled = await client.post(url, headers={"X-Order-Token": token})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "CANCELLED"
        assert (await slot_row(container.ctx, 1))["reserved"] == 0
