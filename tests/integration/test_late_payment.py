"""LATE_PAYMENT_POLICY=dispense: money for an expired order vends if the stock is still there."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.conftest import FakeClock
from tests.integration.helpers import (
    order,
    order_status,
    outbox_rows,
    pay,
    quick_shop,
    rows,
    slot_row,
)
from vendhub.adapters.db.tables import refunds
from vendhub.services.context import ServiceContext
from vendhub.services.orders import expire_due_orders

pytestmark = pytest.mark.integration


async def _expired_order(ctx: ServiceContext, clock: FakeClock) -> str:
    order_id = await order(ctx, slot=1)
    clock.advance(ctx.tunables.order_ttl_s + 1)
    assert await expire_due_orders(ctx) == [order_id]
    return order_id


async def test_a_late_payment_is_dispensed_when_the_policy_says_so_and_stock_allows(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    ctx.tunables = replace(ctx.tunables, late_payment_policy="dispense")
    await quick_shop(ctx, stock=1)
    order_id = await _expired_order(ctx, clock)
    assert (await slot_row(ctx, 1))["reserved"] == 0

    assert await pay(ctx, order_id, 8000) == "late_payment_dispensed"
    assert await order_status(ctx, order_id) == "DISPENSING"
    [command] = await outbox_rows(ctx, "dispense")
    assert command["body"]["orderId"] == order_id
    assert (await slot_row(ctx, 1))["reserved"] == 1
    assert await rows(ctx, refunds) == []
    # The same payment told again changes nothing.
    assert await pay(ctx, order_id, 8000) == "duplicate"
    assert len(await outbox_rows(ctx, "dispense")) == 1


async def test_a_late_payment_is_refunded_when_the_stock_was_sold_meanwhile(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    ctx.tunables = replace(ctx.tunables, late_payment_policy="dispense")
    await quick_shop(ctx, stock=1)
    late = await _expired_order(ctx, clock)
    await order(ctx, slot=1)  # someone else reserves the last unit

    assert await pay(ctx, late, 8000) == "late_payment"
    assert await order_status(ctx, late) == "EXPIRED"
    [refund] = await rows(ctx, refunds)
    assert (refund["refund_key"], refund["amount"]) == (f"late-{late}", 8000)
    assert await outbox_rows(ctx, "dispense") == []
    assert (await slot_row(ctx, 1))["reserved"] == 1  # only the other order's


async def test_by_default_a_late_payment_is_refunded_even_with_stock(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx, stock=5)
    late = await _expired_order(ctx, clock)
    assert await pay(ctx, late, 8000) == "late_payment"
    assert await order_status(ctx, late) == "EXPIRED"
    assert await outbox_rows(ctx, "dispense") == []
