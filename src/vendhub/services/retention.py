"""Telemetry retention: roll raw readings up per machine-hour, then delete old rows in batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from vendhub.adapters.db.tables import telemetry, telemetry_hourly
from vendhub.services.context import ServiceContext
from vendhub.services.views import HourlyView, Slice, Window

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)
# An hour is rolled up only this long after it ended: readings stamped just before the hour
# turned may still be in the intake's batch.
SETTLE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    raw_days: int = 14
    rollup_days: int = 400
    batch: int = 5000
    max_hours_per_pass: int = 48  # bounds one pass; the next pass continues


@dataclass(frozen=True, slots=True)
class RetentionPass:
    hours_rolled_up: int
    raw_deleted: int
    rollups_deleted: int


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def run_pass(ctx: ServiceContext, policy: RetentionPolicy) -> RetentionPass:
    """Roll up finished hours, then delete what is past retention. Safe to interrupt anywhere:
    each hour's rollup and each deleted batch is its own transaction, and raw rows are only
    deleted once their hour is rolled up."""
    hours = await roll_up(ctx, policy.max_hours_per_pass)
    now = ctx.clock()
    raw = 0
    rolled_up_until = await _rolled_up_until(ctx)
    if rolled_up_until is not None:  # nothing is deleted before it has been rolled up
        raw_cutoff = min(now - timedelta(days=policy.raw_days), rolled_up_until)
        raw = await _delete_batches(
            ctx, telemetry, telemetry.c.received_at, raw_cutoff, policy.batch
        )
    rollup_cutoff = now - timedelta(days=policy.rollup_days)
    rollups = await _delete_batches(
        ctx, telemetry_hourly, telemetry_hourly.c.hour, rollup_cutoff, policy.batch
    )
    if hours or raw or rollups:
        log.info(
            "telemetry retention: %d hour(s) rolled up, %d raw and %d hourly row(s) deleted",
            hours,
            raw,
            rollups,
        )
    return RetentionPass(hours, raw, rollups)


async def hourly_for(
    ctx: ServiceContext, machine_id: str, since: datetime | None, window: Window
) -> Slice[HourlyView]:
    """A machine's hourly rollups, newest first."""
    query = sa.select(telemetry_hourly).where(telemetry_hourly.c.machine_id == machine_id)
    if since is not None:
        query = query.where(telemetry_hourly.c.hour >= since)
    query = window.apply(query.order_by(telemetry_hourly.c.hour.desc()))
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return Slice.of([HourlyView.model_validate(r) for r in rows], window)


async def roll_up(ctx: ServiceContext, max_hours: int) -> int:
    """Roll up every finished hour after the last one rolled up (skipping empty hours)."""
    settled = ctx.clock() - SETTLE
    done = 0
    start = await _rolled_up_until(ctx)
    while done < max_hours:
        async with ctx.engine.connect() as conn:
            query = sa.select(sa.func.min(telemetry.c.received_at))
            if start is not None:
                query = query.where(telemetry.c.received_at >= start)
            first = (await conn.execute(query)).scalar()
        if first is None or hour_of(first) + HOUR > settled:
            break
        hour = hour_of(first)
        await roll_up_hour(ctx, hour)
        done += 1
        start = hour + HOUR
    return done


async def roll_up_hour(ctx: ServiceContext, hour: datetime) -> None:
    """Replace the hour's rollup rows in one transaction, so a re-run gives the same rows."""
    c = telemetry.c
    stats = (
        sa.select(
            c.machine_id,
            sa.func.count().label("readings"),
            *_min_avg_max(c.temperature, "temperature"),
            *_min_avg_max(c.humidity, "humidity"),
            *_min_avg_max(c.rssi, "rssi"),
        )
        .where(c.received_at >= hour, c.received_at < hour + HOUR)
        .group_by(c.machine_id)
    )
    try:
        async with ctx.engine.begin() as conn:
            rows = [{**r, "hour": hour} for r in (await conn.execute(stats)).mappings()]
            await conn.execute(sa.delete(telemetry_hourly).where(telemetry_hourly.c.hour == hour))
            if rows:
                await conn.execute(sa.insert(telemetry_hourly), rows)
    except IntegrityError:
        # Another replica rolled up the same hour at the same moment; its rows stand.
        log.debug("hour %s rolled up concurrently by another replica", hour)


def _min_avg_max(column: sa.ColumnElement[object], name: str) -> list[sa.Label[object]]:
    return [
        sa.func.min(column).label(f"{name}_min"),
        sa.func.avg(column).label(f"{name}_avg"),
        sa.func.max(column).label(f"{name}_max"),
    ]


async def _rolled_up_until(ctx: ServiceContext) -> datetime | None:
    """The end of the last hour rolled up (None: none yet); raw rows before it are safe to
    delete."""
    async with ctx.engine.connect() as conn:
        last = (await conn.execute(sa.select(sa.func.max(telemetry_hourly.c.hour)))).scalar()
    return None if last is None else hour_of(last) + HOUR


async def _delete_batches(
    ctx: ServiceContext,
    table: sa.Table,
    moment: sa.Column[datetime],
    cutoff: datetime,
    batch: int,
) -> int:
    """Oldest first, `batch` rows per transaction: short locks, bounded undo, and an
    interruption leaves only whole batches deleted."""
    deleted = 0
    while True:
        async with ctx.engine.begin() as conn:
            ids = list(
                (
                    await conn.execute(
                        sa.select(table.c.id)
                        .where(moment < cutoff)
                        .order_by(moment, table.c.id)
                        .limit(batch)
                    )
                ).scalars()
            )
            if not ids:
                return deleted
            await conn.execute(sa.delete(table).where(table.c.id.in_(ids)))
        deleted += len(ids)
