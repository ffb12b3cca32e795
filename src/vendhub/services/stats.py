"""Counts for the metrics endpoint, computed in SQL at scrape time."""

from __future__ import annotations

import sqlalchemy as sa

from vendhub.adapters.db.tables import dispenses, orders, outbox
from vendhub.services.context import ServiceContext


async def snapshot(ctx: ServiceContext) -> dict[str, dict[str, int]]:
    async with ctx.engine.connect() as conn:
        units = (
            await conn.execute(
                sa.select(dispenses.c.status, sa.func.count()).group_by(dispenses.c.status)
            )
        ).all()
        by_status = (
            await conn.execute(
                sa.select(orders.c.status, sa.func.count()).group_by(orders.c.status)
            )
        ).all()
        pending = await conn.scalar(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )
    return {
        "units": {str(s): int(n) for s, n in units},
        "orders": {str(s): int(n) for s, n in by_status},
        "outbox": {"pending": int(pending or 0)},
    }
