"""Many customers paying at one machine at once: no deadlock, one command in flight."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.helpers import count, order, outbox_rows, pay, quick_shop
from vendhub.adapters.db.tables import dispenses
from vendhub.services.context import ServiceContext

pytestmark = pytest.mark.integration


async def test_concurrent_payments_for_one_machine_all_apply_with_one_command_in_flight(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx, stock=10)

    async def buy(n: int) -> str:
        order_id = await order(ctx, slot=1 + n % 3)
        return await pay(ctx, order_id, [8000, 5000, 4500][n % 3])

    outcomes = await asyncio.gather(*(buy(n) for n in range(24)))
    assert outcomes == ["paid"] * 24
    assert await count(ctx, dispenses, dispenses.c.status == "IN_FLIGHT") == 1
    assert await count(ctx, dispenses, dispenses.c.status == "QUEUED") == 23
    assert len(await outbox_rows(ctx, "dispense")) == 1
