"""What several replicas rely on: which machines a reconnect asks to sync."""

from __future__ import annotations

import pytest

from tests.integration.helpers import order, pay, shop
from vendhub.services.catalog import update_machine
from vendhub.services.context import ServiceContext
from vendhub.services.fleet import machines_awaiting_results

pytestmark = pytest.mark.integration


async def test_only_machines_with_a_command_in_flight_are_asked_to_sync(
    ctx: ServiceContext,
) -> None:
    await shop(ctx)
    assert await machines_awaiting_results(ctx) == []
    order_id = await order(ctx)
    assert await machines_awaiting_results(ctx) == []  # unpaid: nothing sent
    await pay(ctx, order_id, 8000)
    assert await machines_awaiting_results(ctx) == ["VM01"]


async def test_an_inactive_machine_is_not_asked_to_sync(ctx: ServiceContext) -> None:
    await shop(ctx)
    await pay(ctx, await order(ctx), 8000)
    await update_machine(ctx, "VM01", {"is_active": False})
    assert await machines_awaiting_results(ctx) == []
