"""Reading rows as mappings: the two shapes every use case needs."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable


async def first(conn: AsyncConnection, stmt: Executable) -> RowMapping | None:
    return (await conn.execute(stmt)).mappings().first()


async def every(conn: AsyncConnection, stmt: Executable) -> list[RowMapping]:
    return list((await conn.execute(stmt)).mappings().all())


async def dicts(conn: AsyncConnection, stmt: Executable) -> list[dict[str, Any]]:
    return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
