"""No overselling on any database: concurrent buyers of the last unit, and CHECK constraints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from tests.integration.helpers import (
    api_client,
    assert_error,
    count,
    outbox_rows,
    quick_shop,
    report,
    sandbox,
    slot_row,
)
from tests.integration.helpers import (
    order as place,
)
from tests.integration.helpers import (
    pay as settle,
)
from vendhub.adapters.db.tables import orders, slots
from vendhub.domain.model import OutOfStock
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.orders import OrderLine

pytestmark = pytest.mark.integration

BUYERS = 10


async def attempt(ctx: ServiceContext, lines: list[OrderLine]) -> str | OutOfStock:
    try:
        return await checkout(
            ctx, sandbox(), "VM01", lines, customer_phone=None, payment_method=None
        )
    except OutOfStock as exc:
        return exc


async def race(ctx: ServiceContext, *orders: list[OrderLine]) -> tuple[list[str], list[Any]]:
    """All checkouts at once, each on its own pooled connection; every one runs to its end."""
    outcomes = await asyncio.gather(
        *(attempt(ctx, lines) for lines in orders), return_exceptions=True
    )
    won = [o for o in outcomes if isinstance(o, str)]
    lost = [o for o in outcomes if isinstance(o, OutOfStock)]
    # Anything else (a deadlock, a constraint error) is a failure, not a lost race.
    assert len(won) + len(lost) == len(outcomes), [o for o in outcomes if not isinstance(o, str)]
    return won, lost


async def test_concurrent_buyers_of_the_last_unit_exactly_one_succeeds(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx, stock=1)
    won, lost = await race(ctx, *([OrderLine(slot_number=1)] for _ in range(BUYERS)))
    assert len(won) == 1 and len(lost) == BUYERS - 1
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (1, 1)
    assert await count(ctx, orders) == 1


async def test_concurrent_buyers_of_three_units_get_exactly_three(ctx: ServiceContext) -> None:
    await quick_shop(ctx, stock=3)
    won, _ = await race(ctx, *([OrderLine(slot_number=1)] for _ in range(BUYERS)))
    assert len(won) == 3
    assert (await slot_row(ctx, 1))["reserved"] == 3


async def test_concurrent_quantity_orders_never_reserve_more_than_stock(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx, stock=5)
    won, _ = await race(ctx, *([OrderLine(slot_number=1, quantity=2)] for _ in range(BUYERS)))
    assert len(won) == 2
    assert (await slot_row(ctx, 1))["reserved"] == 4


async def test_concurrent_multi_slot_orders_in_opposite_order_neither_oversell_nor_error(
    ctx: ServiceContext,
) -> None:
    # Lines name the two slots in opposite orders: reserving in request order would let two
    # transactions each lock one slot and wait for the other (a deadlock on PostgreSQL/MariaDB).
    await quick_shop(ctx, stock=3)
    forward = [OrderLine(slot_number=1), OrderLine(slot_number=2)]
    backward = [OrderLine(slot_number=2), OrderLine(slot_number=1)]
    won, _ = await race(ctx, *(forward if i % 2 else backward for i in range(BUYERS)))
    assert len(won) == 3
    assert (await slot_row(ctx, 1))["reserved"] == 3
    assert (await slot_row(ctx, 2))["reserved"] == 3


async def test_an_order_short_on_one_line_reserves_nothing(ctx: ServiceContext) -> None:
    await quick_shop(ctx, stock=1)
    with pytest.raises(OutOfStock):
        await checkout(
            ctx,
            sandbox(),
            "VM01",
            [OrderLine(slot_number=1), OrderLine(slot_number=2, quantity=2)],
            customer_phone=None,
            payment_method=None,
        )
    assert (await slot_row(ctx, 1))["reserved"] == 0
    assert await count(ctx, orders) == 0


async def test_the_same_slot_twice_in_one_order_counts_both_lines(ctx: ServiceContext) -> None:
    await quick_shop(ctx, stock=1)
    with pytest.raises(OutOfStock):
        await checkout(
            ctx,
            sandbox(),
            "VM01",
            [OrderLine(slot_number=1), OrderLine(slot_number=1)],
            customer_phone=None,
            payment_method=None,
        )
    assert (await slot_row(ctx, 1))["reserved"] == 0


async def test_last_unit_sold_and_dropped_cannot_be_bought_again(ctx: ServiceContext) -> None:
    await quick_shop(ctx, stock=1)
    order_id = await place(ctx, slot=1)
    assert await settle(ctx, order_id, 8000) == "paid"
    [command] = await outbox_rows(ctx, "dispense")
    assert await report(ctx, command["body"]) == "APPLIED"
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (0, 0)
    with pytest.raises(OutOfStock):
        await place(ctx, slot=1)


# --- the database itself refuses overselling -----------------------------------------------


async def _update_slot(ctx: ServiceContext, **values: Any) -> None:
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(slots)
            .where(slots.c.machine_id == "VM01", slots.c.slot_number == 1)
            .values(**values)
        )


@pytest.mark.parametrize(
    "values",
    [
        {"reserved": 3},  # more reserved than counted (stock 2)
        {"current_stock": -1, "reserved": 0},
        {"reserved": -1},
        {"current_stock": 11},  # above capacity 10
    ],
    ids=["reserved-above-stock", "negative-stock", "negative-reserved", "above-capacity"],
)
async def test_database_check_constraints_refuse_impossible_stock(
    ctx: ServiceContext, values: dict[str, int]
) -> None:
    await quick_shop(ctx, stock=2)
    with pytest.raises(IntegrityError):
        await _update_slot(ctx, **values)
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (2, 0)


async def test_database_refuses_decrementing_stock_below_the_reservation(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx, stock=1)
    await place(ctx, slot=1)
    with pytest.raises(IntegrityError):
        await _update_slot(ctx, current_stock=slots.c.current_stock - 1)
    assert (await slot_row(ctx, 1))["current_stock"] == 1


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def client(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(database_urls[backend]) as (client, container):
        await quick_shop(container.ctx, stock=1)
        yield client


async def test_concurrent_api_orders_for_the_last_unit_one_201_rest_409(
    client: httpx.AsyncClient,
) -> None:
    responses = await asyncio.gather(
        *(client.post("/api/orders", json={"slot_number": 1}) for _ in range(BUYERS))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * (BUYERS - 1)
    for r in responses:
        if r.status_code == 409:
            assert_error(r, 409, "out_of_stock")
    stock = (await client.get("/api/products/available", params={"machine_id": "VM01"})).json()[
        "data"
    ]
    assert 1 not in [p["slot_number"] for p in stock]
