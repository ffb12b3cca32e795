"""Telemetry retention: hourly rollups, raw rows deleted in batches only once rolled up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.conftest import FakeClock
from vendhub.adapters.db.tables import telemetry, telemetry_hourly
from vendhub.services.context import ServiceContext
from vendhub.services.retention import RetentionPolicy, roll_up, roll_up_hour, run_pass

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


async def readings(ctx: ServiceContext, *rows: tuple[str, datetime, float, float, int]) -> None:
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.insert(telemetry),
            [
                {
                    "machine_id": m,
                    "received_at": at,
                    "temperature": t,
                    "humidity": h,
                    "rssi": r,
                    "payload": {"temperature": t},
                }
                for m, at, t, h, r in rows
            ],
        )


async def hourly(ctx: ServiceContext) -> list[dict[str, object]]:
    async with ctx.engine.connect() as conn:
        result = await conn.execute(
            sa.select(telemetry_hourly).order_by(telemetry_hourly.c.hour, "machine_id")
        )
        return [{k: v for k, v in row.items() if k != "id"} for row in result.mappings().all()]


async def raw_times(ctx: ServiceContext) -> list[datetime]:
    async with ctx.engine.connect() as conn:
        query = sa.select(telemetry.c.received_at).order_by(telemetry.c.received_at)
        return list((await conn.execute(query)).scalars())


async def test_finished_hours_roll_up_to_min_avg_max_per_machine(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    m = timedelta(minutes=1)
    await readings(
        ctx,
        ("VM01", T0 + 10 * m, 4.0, 60.0, -70),
        ("VM01", T0 + 20 * m, 5.0, 62.0, -60),
        ("VM01", T0 + 50 * m, 9.0, 64.0, -50),
        ("VM02", T0 + 30 * m, 3.0, 50.0, -80),
        ("VM01", T0 + 70 * m, 7.0, 61.0, -65),  # 09:10: the hour still running
    )
    clock.now = T0 + 75 * m
    assert await roll_up(ctx, max_hours=10) == 1
    rows = await hourly(ctx)
    assert [(r["machine_id"], r["hour"], r["readings"]) for r in rows] == [
        ("VM01", T0, 3),
        ("VM02", T0, 1),
    ]
    vm01 = rows[0]
    assert (vm01["temperature_min"], vm01["temperature_max"]) == (4.0, 9.0)
    assert vm01["temperature_avg"] == pytest.approx(6.0)
    assert (vm01["humidity_min"], vm01["humidity_max"]) == (60.0, 64.0)
    assert (vm01["rssi_min"], vm01["rssi_max"]) == (-70, -50)
    assert vm01["rssi_avg"] == pytest.approx(-60.0)
    assert await roll_up(ctx, max_hours=10) == 0  # nothing new until 09:00–10:00 is over


async def test_raw_rows_past_retention_are_deleted_in_batches_and_rollups_kept(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    day = timedelta(days=1)
    await readings(ctx, *(("VM01", T0 + n * day, float(n), 50.0, -60) for n in range(20)))
    clock.now = T0 + 19 * day + timedelta(hours=2)
    done = await run_pass(ctx, RetentionPolicy(raw_days=14, batch=2, max_hours_per_pass=100))
    assert done.hours_rolled_up == 20
    left = await raw_times(ctx)
    assert left == [T0 + n * day for n in range(6, 20)]  # the last 14 days
    assert done.raw_deleted == 6
    assert len(await hourly(ctx)) == 20  # the deleted days stay as rollups


async def test_raw_rows_are_never_deleted_before_their_hour_is_rolled_up(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    day = timedelta(days=1)
    await readings(ctx, *(("VM01", T0 + n * day, float(n), 50.0, -60) for n in range(20)))
    clock.now = T0 + 19 * day + timedelta(hours=2)
    # A pass cut short after 3 hours: only those three days' rows may go.
    done = await run_pass(ctx, RetentionPolicy(raw_days=14, batch=2, max_hours_per_pass=3))
    assert done.raw_deleted == 3
    assert (await raw_times(ctx))[0] == T0 + 3 * day
    # Later passes finish the job, and the result is the uninterrupted one.
    for _ in range(10):
        await run_pass(ctx, RetentionPolicy(raw_days=14, batch=2, max_hours_per_pass=3))
    assert await raw_times(ctx) == [T0 + n * day for n in range(6, 20)]
    assert [r["temperature_max"] for r in await hourly(ctx)] == [float(n) for n in range(20)]


async def test_rollups_older_than_their_retention_are_deleted(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    day = timedelta(days=1)
    await readings(ctx, *(("VM01", T0 + n * day, 1.0, 50.0, -60) for n in range(10)))
    clock.now = T0 + 9 * day + timedelta(hours=2)
    policy = RetentionPolicy(raw_days=1, rollup_days=5, batch=3, max_hours_per_pass=100)
    done = await run_pass(ctx, policy)
    assert done.rollups_deleted == 5  # days 0..4 (08:00) are more than five days before 10:00
    assert [r["hour"] for r in await hourly(ctx)] == [T0 + n * day for n in range(5, 10)]


async def test_rolling_up_an_hour_again_gives_the_same_rows(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await readings(ctx, ("VM01", T0, 4.0, 60.0, -70), ("VM02", T0, 5.0, 61.0, -71))
    clock.now = T0 + timedelta(hours=2)
    await roll_up(ctx, max_hours=5)
    first = await hourly(ctx)
    async with ctx.engine.begin() as conn:  # as if the watermark were lost mid-pass
        await conn.execute(
            sa.delete(telemetry_hourly).where(telemetry_hourly.c.machine_id == "VM02")
        )
    await roll_up_hour(ctx, T0)
    assert await hourly(ctx) == first
