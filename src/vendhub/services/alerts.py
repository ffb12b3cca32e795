"""Alerts: machine events an operator must see, filtered, paged and acknowledged once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vendhub.adapters.db.tables import machine_events
from vendhub.services.context import ServiceContext
from vendhub.services.errors import NotFound
from vendhub.services.rows import dicts, first

log = logging.getLogger(__name__)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


# Info events (a machine coming ONLINE) belong to the timeline, not to the alert list.
ALERTING = (Severity.WARNING.value, Severity.CRITICAL.value)


@dataclass(frozen=True, slots=True)
class AlertFilter:
    machine_id: str | None = None
    kind: str | None = None
    severity: Severity | None = None
    state: str = "all"  # "open", "acknowledged" or "all"
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class AlertPage:
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


async def record(
    conn: AsyncConnection,
    *,
    machine_id: str,
    kind: str,
    message: str,
    severity: Severity,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one alert inside the caller's transaction, so it exists iff the change does."""
    log.warning("alert machine=%s %s: %s", machine_id, kind, message)
    await conn.execute(
        sa.insert(machine_events).values(
            machine_id=machine_id,
            event_type=kind,
            severity=severity.value,
            message=message,
            details=details,
            created_at=now,
        )
    )


def _where(f: AlertFilter) -> list[sa.ColumnElement[bool]]:
    cols = machine_events.c
    where: list[sa.ColumnElement[bool]] = []
    if f.severity is not None:
        where.append(cols.severity == f.severity.value)
    else:
        where.append(cols.severity.in_(ALERTING))
    if f.machine_id:
        where.append(cols.machine_id == f.machine_id)
    if f.kind:
        where.append(cols.event_type == f.kind)
    if f.state == "open":
        where.append(cols.acknowledged_at.is_(None))
    elif f.state == "acknowledged":
        where.append(cols.acknowledged_at.is_not(None))
    if f.since is not None:
        where.append(cols.created_at >= f.since)
    if f.until is not None:
        where.append(cols.created_at < f.until)
    return where


async def list_alerts(ctx: ServiceContext, f: AlertFilter, limit: int, offset: int) -> AlertPage:
    where = _where(f)
    stmt = (
        sa.select(machine_events)
        .where(*where)
        .order_by(machine_events.c.created_at.desc(), machine_events.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    async with ctx.engine.connect() as conn:
        total = await conn.scalar(
            sa.select(sa.func.count()).select_from(machine_events).where(*where)
        )
        items = await dicts(conn, stmt)
    return AlertPage(items=items, total=int(total or 0), limit=limit, offset=offset)


async def acknowledge(ctx: ServiceContext, alert_id: int, username: str) -> dict[str, Any]:
    """The first acknowledgement wins; acknowledging again changes nothing."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(machine_events)
            .where(machine_events.c.id == alert_id, machine_events.c.acknowledged_at.is_(None))
            .values(acknowledged_at=now, acknowledged_by=username[:64])
        )
        row = await first(conn, sa.select(machine_events).where(machine_events.c.id == alert_id))
    if row is None:
        raise NotFound(f"alert {alert_id} not found")
    return dict(row)


async def open_counts(ctx: ServiceContext) -> dict[str, int]:
    """Unacknowledged warning/critical alerts per machine."""
    stmt = (
        sa.select(machine_events.c.machine_id, sa.func.count())
        .where(
            machine_events.c.acknowledged_at.is_(None),
            machine_events.c.severity.in_(ALERTING),
        )
        .group_by(machine_events.c.machine_id)
    )
    async with ctx.engine.connect() as conn:
        return {m: int(n) for m, n in (await conn.execute(stmt)).all()}


async def timeline(ctx: ServiceContext, machine_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """Every event of one machine, info included, newest first."""
    async with ctx.engine.connect() as conn:
        return await dicts(
            conn,
            sa.select(machine_events)
            .where(machine_events.c.machine_id == machine_id)
            .order_by(machine_events.c.created_at.desc(), machine_events.c.id.desc())
            .limit(limit),
        )
