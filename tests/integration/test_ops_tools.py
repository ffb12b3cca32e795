"""Operator tools: the machines list filtered by status, registering simulated machines."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.helpers import api_client, assert_error, bearer, quick_shop
from vendhub.adapters.db.tables import products, slots
from vendhub.protocol.messages import PresenceStatus, StatusMessage
from vendhub.services import fleet
from vendhub.services.context import ServiceContext
from vendhub.services.demo import register_machines

pytestmark = pytest.mark.integration


async def test_the_machines_list_filters_by_status(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> None:
    async with api_client(database_urls[backend]) as (client, container):
        ctx = container.ctx
        await quick_shop(ctx, stock=1)
        await register_machines(ctx, ["VM02", "VM03"])
        await fleet.apply_status(ctx, "VM02", StatusMessage(status=PresenceStatus.OFFLINE))
        await fleet.apply_status(ctx, "VM03", StatusMessage(status=PresenceStatus.ONLINE))
        admin = bearer(container, "user-admin", "SUPER_ADMIN", "admin")

        async def ids(query: str) -> list[str]:
            response = await client.get(f"/api/machines{query}", headers=admin)
            assert response.status_code == 200, response.text
            return [m["id"] for m in response.json()["data"]]

        assert await ids("") == ["VM01", "VM02", "VM03"]
        assert await ids("?status=OFFLINE") == ["VM02"]
        assert await ids("?status=ONLINE") == ["VM03"]
        assert await ids("?status=MAINTENANCE") == []
        assert_error(await client.get("/api/machines?status=offline!", headers=admin), 422)


async def test_registering_machines_creates_stocked_slots_once_sharing_products(
    ctx: ServiceContext,
) -> None:
    created = await register_machines(ctx, ["SIM0001", "SIM0002"], stock=5)
    assert created == 2
    assert await register_machines(ctx, ["SIM0001", "SIM0002", "SIM0003"], stock=5) == 1
    async with ctx.engine.connect() as conn:
        stock = (
            await conn.execute(
                sa.select(slots.c.machine_id, sa.func.count(), sa.func.sum(slots.c.current_stock))
                .group_by(slots.c.machine_id)
                .order_by(slots.c.machine_id)
            )
        ).all()
        product_count = await conn.scalar(sa.select(sa.func.count()).select_from(products))
    assert [tuple(r) for r in stock] == [("SIM0001", 6, 30), ("SIM0002", 6, 30), ("SIM0003", 6, 30)]
    assert product_count == 6


async def test_hourly_rollups_are_served_newest_first(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> None:
    from datetime import UTC, datetime, timedelta

    from vendhub.adapters.db.tables import telemetry
    from vendhub.services.retention import roll_up

    async with api_client(database_urls[backend]) as (client, container):
        ctx = container.ctx
        await quick_shop(ctx, stock=1)
        start = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
        async with ctx.engine.begin() as conn:
            await conn.execute(
                sa.insert(telemetry),
                [
                    {
                        "machine_id": "VM01",
                        "received_at": start + timedelta(minutes=30 * n),
                        "temperature": float(n),
                        "payload": {},
                    }
                    for n in range(6)
                ],
            )
        await roll_up(ctx, max_hours=10)  # the real clock: all three hours are long over
        admin = bearer(container, "user-admin", "SUPER_ADMIN", "admin")
        response = await client.get("/api/telemetry/VM01/hourly?limit=2", headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [
            (r["readings"], r["temperature_min"], r["temperature_max"]) for r in body["data"]
        ] == [
            (2, 4.0, 5.0),
            (2, 2.0, 3.0),
        ]
        assert body["next_offset"] == 2
        naive = await client.get(
            "/api/telemetry/VM01/hourly?since=2026-11-01T00:00:00", headers=admin
        )
        assert_error(naive, 422)
