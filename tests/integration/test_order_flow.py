"""The core flow on every database: order, payment, dispense command, result, stock."""

from __future__ import annotations

import pytest

from tests.integration.helpers import order, outbox_rows, pay, report, shop, slot_row
from vendhub.services.context import ServiceContext
from vendhub.services.orders import get_order

pytestmark = pytest.mark.integration


async def test_paid_order_dispenses_and_decrements_stock_once(ctx: ServiceContext) -> None:
    await shop(ctx, stock=5)
    order_id = await order(ctx, slot=1)
    assert (await slot_row(ctx, 1))["reserved"] == 1
    assert await pay(ctx, order_id, 8000) == "paid"
    [command] = await outbox_rows(ctx, "dispense")
    assert command["topic"] == "vm/VM01/command"
    assert command["body"]["orderId"] == order_id and command["body"]["slot"] == 1
    assert command["body"]["timeoutMs"] == 2150
    assert await report(ctx, command["body"]) == "APPLIED"
    assert await report(ctx, command["body"]) == "DUPLICATE"
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (4, 0)
    view = await get_order(ctx, order_id)
    assert view["status"] == "COMPLETED"
    assert [a["body"]["commandId"] for a in await outbox_rows(ctx, "ack")] == [
        command["body"]["commandId"]
    ] * 2
