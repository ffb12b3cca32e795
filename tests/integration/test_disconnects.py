"""Without a ping per checkout: a pooled connection the server dropped costs one retry, no loss."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from tests.integration.helpers import order, order_status, pay, quick_shop
from vendhub.adapters.db.engine import create_engine
from vendhub.services.context import ServiceContext

pytestmark = pytest.mark.integration

WHO_AM_I = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
KILL = {"postgresql": "SELECT pg_terminate_backend({})", "mysql": "KILL {}"}


async def _drop_pooled_connection(ctx: ServiceContext) -> None:
    """The server ends the one idle connection in the pool, as a restart or a timeout would."""
    dialect = ctx.engine.dialect.name
    async with ctx.engine.connect() as conn:
        victim = await conn.scalar(sa.text(WHO_AM_I[dialect]))
    killer = create_engine(ctx.engine.url.render_as_string(hide_password=False))
    try:
        async with killer.connect() as conn:
            await conn.execute(sa.text(KILL[dialect].format(int(victim))))
    finally:
        await killer.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
async def test_a_payment_on_a_connection_the_server_dropped_is_applied_by_the_retry(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx)
    order_id = await order(ctx)
    await ctx.engine.dispose()  # the pool keeps exactly one connection: the one dropped next
    async with ctx.engine.connect() as conn:
        await conn.scalar(sa.text("SELECT 1"))
    await _drop_pooled_connection(ctx)
    assert await pay(ctx, order_id, 8000) == "paid"
    assert await order_status(ctx, order_id) in ("PENDING_DISPENSE", "DISPENSING")


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
async def test_without_the_retry_the_dropped_connection_fails_one_transaction_only(
    ctx: ServiceContext,
) -> None:
    """What the retry is for: the pool has no ping, so the first use finds the dead socket."""
    await ctx.engine.dispose()
    async with ctx.engine.connect() as conn:
        await conn.scalar(sa.text("SELECT 1"))
    await _drop_pooled_connection(ctx)
    with pytest.raises(DBAPIError) as failed:
        async with ctx.engine.connect() as conn:
            await conn.scalar(sa.text("SELECT 1"))
    assert failed.value.connection_invalidated
    async with ctx.engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT 1")) == 1
