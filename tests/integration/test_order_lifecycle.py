"""Order and command lifecycles on every database: expiry, cancel, retransmit, give up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import FakeClock
from tests.integration.helpers import (
    api_client,
    assert_error,
    bearer,
    count,
    order,
    order_status,
    outbox_rows,
    pay,
    quick_shop,
    report,
    rows,
    sandbox,
    slot_row,
)
from vendhub.adapters.db.tables import dispenses, outbox, refunds, stock_logs
from vendhub.domain.model import IllegalTransition
from vendhub.services import commands, dispatch
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.errors import Conflict, NotFound
from vendhub.services.orders import OrderLine, cancel_order, expire_due_orders, get_order

pytestmark = pytest.mark.integration

COCA_COLA = 8000
# timeoutMs of the demo slots: motor 1500 ms + 650 ms margin.
TIMEOUT_S = 2.15


def retry_wait(ctx: ServiceContext) -> float:
    """Seconds from a command going out to its retransmission: timeoutMs + grace."""
    return TIMEOUT_S + ctx.tunables.result_grace_ms / 1000


async def paid(ctx: ServiceContext, quantity: int = 1) -> str:
    order_id = await order(ctx, slot=1, quantity=quantity)
    assert await pay(ctx, order_id, COCA_COLA * quantity) == "paid"
    return order_id


async def publish_all(ctx: ServiceContext) -> int:
    """What the outbox publisher does after the broker acknowledged each message."""
    items = await commands.pending(ctx)
    await commands.mark_done(ctx, sent=items, skipped=[])
    return len(items)


@pytest.fixture
async def stocked(ctx: ServiceContext) -> ServiceContext:
    await quick_shop(ctx, stock=5)
    return ctx


# --- unpaid orders ------------------------------------------------------------------------


async def test_unpaid_order_expires_after_its_ttl_and_releases_stock(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    order_id = await order(ctx, slot=1, quantity=2)
    clock.advance(ctx.tunables.order_ttl_s - 1)
    assert await expire_due_orders(ctx) == []
    assert (await slot_row(ctx, 1))["reserved"] == 2
    clock.advance(2)
    assert await expire_due_orders(ctx) == [order_id]
    assert await expire_due_orders(ctx) == []
    view = await get_order(ctx, order_id)
    assert view["status"] == "EXPIRED" and view["payment"]["status"] == "EXPIRED"
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (5, 0)
    [release] = await rows(ctx, stock_logs, stock_logs.c.order_id == order_id)
    assert release["change_type"] == "RELEASE"


async def test_paid_order_is_not_expired_by_its_ttl(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    order_id = await paid(ctx)
    clock.advance(ctx.tunables.order_ttl_s + 1)
    assert await expire_due_orders(ctx) == []
    assert await order_status(ctx, order_id) == "DISPENSING"
    assert (await slot_row(ctx, 1))["reserved"] == 1


async def test_cancelled_order_releases_stock_and_cannot_be_cancelled_twice(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    order_id = await order(ctx, slot=1)
    await cancel_order(ctx, order_id)
    assert await order_status(ctx, order_id) == "CANCELLED"
    assert (await slot_row(ctx, 1))["reserved"] == 0
    with pytest.raises(Conflict):
        await cancel_order(ctx, order_id)
    assert await count(ctx, stock_logs, stock_logs.c.change_type == "RELEASE") == 1


async def test_paid_order_cannot_be_cancelled(stocked: ServiceContext) -> None:
    ctx = stocked
    order_id = await paid(ctx)
    with pytest.raises(Conflict):
        await cancel_order(ctx, order_id)
    assert await order_status(ctx, order_id) == "DISPENSING"
    assert (await slot_row(ctx, 1))["reserved"] == 1


async def test_cancelling_an_unknown_order_is_not_found(stocked: ServiceContext) -> None:
    with pytest.raises(NotFound):
        await cancel_order(stocked, "ORD-20261127-00000000")


async def test_illegal_order_transition_is_refused_not_applied(stocked: ServiceContext) -> None:
    ctx = stocked
    order_id = await order(ctx, slot=1)
    async with ctx.engine.begin() as conn:
        row = await dispatch.lock_order(conn, order_id)
        assert row is not None
        with pytest.raises(IllegalTransition):
            await dispatch.set_order_status(conn, row, dispatch.OrderStatus.COMPLETED, ctx.clock())
    assert await order_status(ctx, order_id) == "PENDING"


# --- retransmission -----------------------------------------------------------------------


async def test_silent_command_is_retransmitted_with_the_same_command_id(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    await paid(ctx)
    [first] = await outbox_rows(ctx, "dispense")
    # Not yet published: nothing to retransmit however long we wait for it.
    clock.advance(retry_wait(ctx) + 1)
    assert await commands.retransmit_due(ctx) == 0
    assert await publish_all(ctx) == 1
    clock.advance(retry_wait(ctx) - 0.5)
    assert await commands.retransmit_due(ctx) == 0
    clock.advance(1)
    assert await commands.retransmit_due(ctx) == 1
    assert await commands.retransmit_due(ctx) == 0  # one copy per wait, not one per tick
    original, again = await outbox_rows(ctx, "dispense")
    assert (again["body"], again["topic"]) == (first["body"], first["topic"])
    assert again["published_at"] is None and original["published_at"] is not None
    [unit] = await rows(ctx, dispenses)
    assert unit["attempts"] == 1 and unit["id"] == first["body"]["commandId"]
    # The unit is re-checked under its lock: a copy already waiting is not queued again.
    assert await commands._retransmit(ctx, unit["id"], clock()) is False
    assert len(await outbox_rows(ctx, "dispense")) == 2


async def test_two_units_due_at_once_are_each_retransmitted_once_most_overdue_first(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    await quick_shop(ctx, stock=5, machine_id="VM02")
    await paid(ctx)
    vm02_order = await checkout(
        ctx,
        sandbox(),
        "VM02",
        [OrderLine(slot_number=1, quantity=1)],
        customer_phone=None,
        payment_method=None,
    )
    assert await pay(ctx, vm02_order, COCA_COLA) == "paid"
    assert await publish_all(ctx) == 2
    units = await rows(ctx, dispenses)
    unit = {u["machine_id"]: u["id"] for u in units}
    [due] = {u["next_attempt_at"] for u in units}
    # Both due at once; VM02's (written last) a second more overdue.
    async with ctx.engine.begin() as conn:
        for machine_id, earlier in (("VM01", 0), ("VM02", 1)):
            await conn.execute(
                sa.update(dispenses)
                .where(dispenses.c.id == unit[machine_id])
                .values(next_attempt_at=due - timedelta(seconds=earlier))
            )
    clock.advance(retry_wait(ctx) + 1)

    async def copies() -> list[str]:
        sent = await outbox_rows(ctx, "dispense")
        return [r["body"]["commandId"] for r in sent if r["published_at"] is None]

    # One at a time: the unit copied is the one the pass picked, the most overdue.
    assert await commands.retransmit_due(ctx, limit=1) == 1
    assert await copies() == [unit["VM02"]]
    assert await commands.retransmit_due(ctx) == 1
    assert await commands.retransmit_due(ctx) == 0
    assert await copies() == [unit["VM02"], unit["VM01"]]
    # Each unit: its first command and exactly one copy, on its own machine's topic.
    sent = await outbox_rows(ctx, "dispense")
    for machine_id, unit_id in unit.items():
        topics = [r["topic"] for r in sent if r["body"]["commandId"] == unit_id]
        assert topics == [f"{ctx.tunables.topic_prefix}/{machine_id}/command"] * 2
    await publish_all(ctx)
    assert {u["id"]: u["attempts"] for u in await rows(ctx, dispenses)} == {
        unit["VM01"]: 2,
        unit["VM02"]: 2,
    }


async def test_retransmission_stops_at_max_attempts(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    await paid(ctx)
    for _ in range(10):
        await publish_all(ctx)
        clock.advance(retry_wait(ctx) + 0.1)
        await commands.retransmit_due(ctx)
    sent = await outbox_rows(ctx, "dispense")
    assert len(sent) == ctx.tunables.dispense_max_attempts
    assert len({r["body"]["commandId"] for r in sent}) == 1
    [unit] = await rows(ctx, dispenses)
    assert unit["attempts"] == ctx.tunables.dispense_max_attempts


async def test_no_retransmission_after_expires_at(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    await paid(ctx)
    await publish_all(ctx)
    clock.advance(ctx.tunables.command_ttl_s + 0.5)
    assert await commands.retransmit_due(ctx) == 0
    assert len(await outbox_rows(ctx, "dispense")) == 1


async def test_result_after_retransmission_applies_once(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    order_id = await paid(ctx)
    await publish_all(ctx)
    clock.advance(retry_wait(ctx) + 1)
    assert await commands.retransmit_due(ctx) == 1
    await publish_all(ctx)
    command = (await outbox_rows(ctx, "dispense"))[0]["body"]
    assert await report(ctx, command) == "APPLIED"
    assert await report(ctx, command) == "DUPLICATE"
    clock.advance(retry_wait(ctx) + 1)
    assert await commands.retransmit_due(ctx) == 0
    assert await order_status(ctx, order_id) == "COMPLETED"
    assert (await slot_row(ctx, 1))["current_stock"] == 4


async def test_a_command_whose_unit_already_settled_is_closed_by_the_result_never_sent(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    await paid(ctx)
    [item] = [i for i in await commands.pending(ctx) if i.kind == "dispense"]
    assert item.sendable
    command = (await outbox_rows(ctx, "dispense"))[0]["body"]
    await report(ctx, command)
    await commands.release(ctx, [item])  # as a publisher cut short would
    # The result's transaction closed the unsent row: the poll never claims it again.
    assert [i for i in await commands.pending(ctx) if i.kind == "dispense"] == []
    [row] = await outbox_rows(ctx, "dispense")
    assert row["published_at"] is not None


# --- giving up ----------------------------------------------------------------------------


def give_up_after(ctx: ServiceContext) -> float:
    """Seconds from dispatch to giving up: command TTL (expiresAt) + timeoutMs + grace."""
    return ctx.tunables.command_ttl_s + retry_wait(ctx)


async def test_sent_command_without_result_is_given_up_with_no_result_and_refunded(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    order_id = await paid(ctx)
    await publish_all(ctx)
    clock.advance(give_up_after(ctx) - 0.5)
    assert await commands.give_up_due(ctx) == 0
    assert await order_status(ctx, order_id) == "DISPENSING"
    clock.advance(1)
    assert await commands.give_up_due(ctx) == 1
    assert await commands.give_up_due(ctx) == 0
    view = await get_order(ctx, order_id)
    assert view["status"] == "FAILED"
    [unit] = view["dispenses"]
    assert (unit["status"], unit["error_message"]) == ("FAILED", "NO_RESULT")
    [refund] = view["refunds"]
    assert (refund["amount"], refund["status"], refund["dispense_id"]) == (
        COCA_COLA,
        "PENDING",
        unit["id"],
    )
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (5, 0)


async def test_never_published_command_is_given_up_as_expired(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    order_id = await paid(ctx)
    clock.advance(give_up_after(ctx) + 1)
    assert await commands.give_up_due(ctx) == 1
    [unit] = (await get_order(ctx, order_id))["dispenses"]
    assert unit["error_message"] == "EXPIRED"
    assert await count(ctx, refunds) == 1


async def test_give_up_dispatches_the_next_queued_unit(
    stocked: ServiceContext, clock: FakeClock
) -> None:
    ctx = stocked
    order_id = await paid(ctx, quantity=2)
    await publish_all(ctx)
    [first] = await outbox_rows(ctx, "dispense")
    clock.advance(give_up_after(ctx) + 1)
    assert await commands.give_up_due(ctx) == 1
    _, second = await outbox_rows(ctx, "dispense")
    assert second["body"]["commandId"] != first["body"]["commandId"]
    # The next unit gets a fresh expiry, from when it was dispatched.
    assert second["body"]["expiresAt"] > first["body"]["expiresAt"]
    assert await order_status(ctx, order_id) == "DISPENSING"
    assert await report(ctx, second["body"]) == "APPLIED"
    view = await get_order(ctx, order_id)
    assert view["status"] == "FAILED"  # one unit dropped, one given up
    assert [r["amount"] for r in view["refunds"]] == [COCA_COLA]
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (4, 0)


# --- manual trigger -----------------------------------------------------------------------


async def test_trigger_refuses_an_unpaid_order(stocked: ServiceContext) -> None:
    ctx = stocked
    order_id = await order(ctx, slot=1)
    with pytest.raises(Conflict):
        await dispatch.trigger(ctx, order_id)
    assert await outbox_rows(ctx) == []


async def test_trigger_dispatches_a_queued_unit_nothing_else_would_send(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    order_id = await paid(ctx)
    # The state a crash between commit and dispatch would leave: queued, nothing in flight.
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.delete(outbox))
        await conn.execute(
            sa.update(dispenses).values(
                status="QUEUED",
                inflight_machine=None,
                expires_at=ctx.clock() + timedelta(minutes=5),  # its queue deadline
            )
        )
    assert await dispatch.trigger(ctx, order_id) == "DISPENSING"
    [command] = await outbox_rows(ctx, "dispense")
    assert command["body"]["orderId"] == order_id
    # Triggering again does not send a second copy while the first is in flight.
    await dispatch.trigger(ctx, order_id)
    assert len(await outbox_rows(ctx, "dispense")) == 1


async def test_order_paid_while_broker_is_down_waits_then_dispenses_once_sent(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    ctx.mqtt_connected = lambda: False
    order_id = await paid(ctx)
    assert await order_status(ctx, order_id) == "PENDING_DISPENSE"
    assert await dispatch.trigger(ctx, order_id) == "PENDING_DISPENSE"
    assert len(await outbox_rows(ctx, "dispense")) == 1
    await publish_all(ctx)
    assert await order_status(ctx, order_id) == "DISPENSING"
    command = (await outbox_rows(ctx, "dispense"))[0]["body"]
    assert await report(ctx, command) == "APPLIED"
    assert await order_status(ctx, order_id) == "COMPLETED"


# --- over HTTP ----------------------------------------------------------------------------


@pytest.fixture
async def http(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, dict[str, str]]]:
    async with api_client(database_urls[backend]) as (client, container):
        await quick_shop(container.ctx, stock=5)
        yield client, container, bearer(container, "tech-1", "TECHNICIAN")


async def create(client: httpx.AsyncClient) -> str:
    return (await create_with_token(client))[0]


async def create_with_token(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """The new order's id and the header that carries its access token."""
    response = await client.post("/api/orders", json={"slot_number": 1})
    assert response.status_code == 201, response.text
    body = response.json()
    return str(body["order_id"]), {"X-Order-Token": body["access_token"]}


async def test_cancel_endpoint_cancels_pending_order_and_refuses_a_paid_one(
    http: tuple[httpx.AsyncClient, Any, dict[str, str]],
) -> None:
    client, container, tech = http
    pending_id, token = await create_with_token(client)
    response = await client.post(f"/api/payments/cancel/{pending_id}", headers=token)
    assert response.status_code == 200
    assert response.json() == {"success": True, "order_id": pending_id, "status": "CANCELLED"}
    assert (await client.get(f"/api/orders/{pending_id}")).json()["status"] == "CANCELLED"
    cancel_again = await client.post(f"/api/payments/cancel/{pending_id}", headers=token)
    assert_error(cancel_again, 409, "conflict")

    paid_id = await create(client)
    assert await pay(container.ctx, paid_id, COCA_COLA) == "paid"
    assert_error(await client.post(f"/api/payments/cancel/{paid_id}", headers=tech), 409)
    assert (await client.get(f"/api/orders/{paid_id}")).json()["status"] == "PENDING_DISPENSE"
    assert (await slot_row(container.ctx, 1))["reserved"] == 1
    assert_error(await client.post("/api/payments/cancel/ORD-NOPE"), 404, "not_found")


async def test_dispense_trigger_endpoint_moves_waiting_order_and_refuses_pending(
    http: tuple[httpx.AsyncClient, Any, dict[str, str]],
) -> None:
    client, container, tech = http
    order_id = await create(client)
    trigger = {"order_id": order_id}
    assert_error(await client.post("/api/dispense/trigger", json=trigger, headers=tech), 409)
    assert await outbox_rows(container.ctx, "dispense") == []
    assert await pay(container.ctx, order_id, COCA_COLA) == "paid"
    response = await client.post("/api/dispense/trigger", json=trigger, headers=tech)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "order_id": order_id, "status": "PENDING_DISPENSE"}
    assert len(await outbox_rows(container.ctx, "dispense")) == 1
    await publish_all(container.ctx)
    status = (await client.get(f"/api/dispense/status/{order_id}")).json()
    assert status["status"] == "DISPENSING"
    assert status["dispenses"][0]["attempts"] == 1
    missing = {"order_id": "ORD-NOPE"}
    assert_error(await client.post("/api/dispense/trigger", json=missing, headers=tech), 404)
    assert_error(await client.post("/api/dispense/trigger", json=trigger), 401)


async def test_expired_order_is_shown_expired_over_http(
    http: tuple[httpx.AsyncClient, Any, dict[str, str]],
) -> None:
    client, container, tech = http
    order_id = await create(client)
    ctx = container.ctx
    real_clock = ctx.clock
    ctx.clock = lambda: real_clock() + timedelta(seconds=ctx.tunables.order_ttl_s + 1)
    try:
        assert await expire_due_orders(ctx) == [order_id]
    finally:
        ctx.clock = real_clock
    body = (await client.get(f"/api/orders/{order_id}")).json()
    assert body["status"] == "EXPIRED"
    assert body["payment_status"] == "EXPIRED"
    assert_error(await client.post(f"/api/payments/cancel/{order_id}", headers=tech), 409)


# --- the paid unit's first write (issue 11: fewer statements) --------------------------------


async def _units(ctx: ServiceContext, order_id: str) -> list[dict[str, Any]]:
    return await rows(ctx, dispenses, dispenses.c.order_id == order_id)


async def test_a_paid_unit_on_a_free_machine_is_written_in_flight_with_its_command(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    order_id = await paid(ctx)
    [unit] = await _units(ctx, order_id)
    assert unit["status"] == "IN_FLIGHT" and unit["inflight_machine"] == "VM01"
    assert unit["dispatched_at"] == ctx.clock()
    assert unit["expires_at"] == ctx.clock() + timedelta(seconds=ctx.tunables.command_ttl_s)
    [row] = await outbox_rows(ctx, "dispense")
    assert row["body"]["commandId"] == unit["id"]
    assert await order_status(ctx, order_id) == "DISPENSING"


async def test_a_unit_left_waiting_on_an_idle_machine_goes_before_a_newly_paid_one(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    waiting = await paid(ctx)
    # As after a crash between a result and the next dispatch: a queued unit, none in flight.
    await sa_exec(
        ctx,
        sa.update(dispenses)
        .where(dispenses.c.order_id == waiting)
        .values(status="QUEUED", inflight_machine=None),
    )
    await sa_exec(ctx, sa.delete(outbox))
    newer = await paid(ctx)
    [first] = await _units(ctx, waiting)
    [second] = await _units(ctx, newer)
    assert (first["status"], second["status"]) == ("IN_FLIGHT", "QUEUED")
    [row] = await outbox_rows(ctx, "dispense")
    assert row["body"]["commandId"] == first["id"]


async def test_a_dropped_unit_logs_the_slots_counts_as_they_were_and_are(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    before = (await slot_row(ctx, 1))["current_stock"]
    order_id = await paid(ctx)
    command = (await outbox_rows(ctx, "dispense"))[0]["body"]
    assert await report(ctx, command) == "APPLIED"
    [log] = await rows(ctx, stock_logs, stock_logs.c.order_id == order_id)
    assert (log["change_type"], log["quantity_change"]) == ("DISPENSE", -1)
    assert (log["stock_before"], log["stock_after"]) == (before, before - 1)
    assert (log["dispense_id"], log["slot_number"]) == (command["commandId"], 1)
    assert log["created_at"] == ctx.clock()
    assert await order_status(ctx, order_id) == "COMPLETED"


async def test_a_failed_unit_logs_its_released_reservation_with_the_counted_stock(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    before = await slot_row(ctx, 1)
    order_id = await paid(ctx)
    command = (await outbox_rows(ctx, "dispense"))[0]["body"]
    assert await report(ctx, command, dropped=False, error="JAM") == "APPLIED"
    [log] = await rows(ctx, stock_logs, stock_logs.c.order_id == order_id)
    assert (log["change_type"], log["quantity_change"]) == ("RELEASE", 0)
    assert (log["stock_before"], log["stock_after"]) == (before["current_stock"],) * 2
    after = await slot_row(ctx, 1)
    assert after["reserved"] == before["reserved"]
    assert await order_status(ctx, order_id) == "FAILED"


async def sa_exec(ctx: ServiceContext, stmt: Any) -> None:
    async with ctx.engine.begin() as conn:
        await conn.execute(stmt)
