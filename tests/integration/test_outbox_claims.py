"""Outbox claims: a row is handed to one publisher at a time (replicas, SKIP LOCKED, lease)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import FakeClock
from tests.integration.helpers import order, pay, quick_shop
from vendhub.services import catalog, commands
from vendhub.services.context import ServiceContext

pytestmark = pytest.mark.integration


async def _paid_orders(ctx: ServiceContext, n: int) -> None:
    await quick_shop(ctx)
    for slot in range(1, n + 1):
        await pay(
            ctx, await order(ctx, slot=slot), [8000, 5000, 4500, 11000, 6000, 15000][slot - 1]
        )


async def test_a_claimed_row_is_not_handed_out_again_until_its_lease_ends(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await _paid_orders(ctx, 1)
    [first] = await commands.pending(ctx)
    assert await commands.pending(ctx) == []
    clock.advance(commands.CLAIM_LEASE_S - 1)
    assert await commands.pending(ctx) == []
    clock.advance(2)  # the claimant died: the row goes out again, same bytes
    [again] = await commands.pending(ctx)
    assert (again.id, again.payload) == (first.id, first.payload)


async def test_released_rows_are_handed_out_at_once(ctx: ServiceContext) -> None:
    await _paid_orders(ctx, 1)
    items = await commands.pending(ctx)
    await commands.release(ctx, items)
    assert [i.id for i in await commands.pending(ctx)] == [i.id for i in items]


async def test_concurrent_publishers_split_the_rows_without_overlap(ctx: ServiceContext) -> None:
    await _paid_orders(ctx, 1)
    for _ in range(5):
        await catalog.push_config(ctx, "VM01")  # five more rows: retained configs
    batches = await asyncio.gather(*(commands.pending(ctx, limit=2) for _ in range(3)))
    ids = [i.id for batch in batches for i in batch]
    assert len(ids) == len(set(ids)) == 6
    assert await commands.pending(ctx) == []


async def test_a_publisher_gives_back_only_the_rows_it_claimed(ctx: ServiceContext) -> None:
    await _paid_orders(ctx, 1)
    for _ in range(3):
        await catalog.push_config(ctx, "VM01")
    mine = await commands.pending(ctx, limit=2)
    theirs = await commands.pending(ctx, limit=2)  # another replica's claim
    assert len(mine) == len(theirs) == 2
    await commands.release(ctx, mine)  # my broker went away mid-batch
    # Mine go out again at once; the other replica's stay claimed until its lease ends.
    assert [i.id for i in await commands.pending(ctx)] == [i.id for i in mine]
