"""Kiosk keys: a machine's own front end authenticates its orders with one."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa

from vendhub.adapters.db.tables import machines
from vendhub.services.context import ServiceContext
from vendhub.services.errors import NotFound


async def issue_kiosk_key(ctx: ServiceContext, machine_id: str) -> str:
    """A new random key for the machine's kiosk (the old one stops working); only its hash
    is stored, so the key is shown once."""
    key = f"kk_{secrets.token_urlsafe(32)}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    async with ctx.engine.begin() as conn:
        updated = await conn.execute(
            sa.update(machines)
            .where(machines.c.id == machine_id)
            .values(kiosk_key_hash=digest, updated_at=ctx.clock())
        )
    if updated.rowcount == 0:
        raise NotFound(f"machine {machine_id} not found")
    return key
