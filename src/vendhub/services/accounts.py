"""Operator accounts as the console manages them: list, change role, deactivate."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from vendhub.adapters.db.tables import users
from vendhub.services.auth import Role
from vendhub.services.context import ServiceContext
from vendhub.services.errors import Conflict, Forbidden, NotFound
from vendhub.services.rows import dicts, first


def may_grant(actor_role: str, role: Role) -> bool:
    """Only a SUPER_ADMIN makes or touches another SUPER_ADMIN."""
    return role is not Role.SUPER_ADMIN or actor_role == Role.SUPER_ADMIN.value


async def list_users(ctx: ServiceContext) -> list[dict[str, Any]]:
    async with ctx.engine.connect() as conn:
        return await dicts(
            conn,
            sa.select(
                users.c.id, users.c.username, users.c.role, users.c.is_active, users.c.created_at
            ).order_by(users.c.username),
        )


async def _target(ctx: ServiceContext, user_id: str, actor: dict[str, Any]) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        row = await first(conn, sa.select(users).where(users.c.id == user_id))
    if row is None:
        raise NotFound(f"user {user_id} not found")
    if not may_grant(actor["role"], Role(row["role"])):
        raise Forbidden("only a SUPER_ADMIN may change a SUPER_ADMIN")
    if row["id"] == actor["sub"]:
        raise Conflict("you cannot change your own account here")
    return dict(row)


async def set_role(ctx: ServiceContext, user_id: str, role: Role, actor: dict[str, Any]) -> None:
    await _target(ctx, user_id, actor)
    if not may_grant(actor["role"], role):
        raise Forbidden("only a SUPER_ADMIN may grant SUPER_ADMIN")
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(users).where(users.c.id == user_id).values(role=role.value))


async def set_active(
    ctx: ServiceContext, user_id: str, active: bool, actor: dict[str, Any]
) -> None:
    await _target(ctx, user_id, actor)
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(users).where(users.c.id == user_id).values(is_active=active))
