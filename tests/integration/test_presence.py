"""Presence: commands wait for offline machines, go out when they return, or are refunded."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa

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
from vendhub.adapters.db.tables import dispenses, machine_events, machines, refunds
from vendhub.protocol.messages import StatusMessage
from vendhub.services import commands, fleet
from vendhub.services.context import ServiceContext

pytestmark = pytest.mark.integration


async def _set_status(ctx: ServiceContext, status: str) -> None:
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(machines)
            .where(machines.c.id == "VM01")
            .values(status=status, last_seen_at=ctx.clock())
        )


async def test_an_order_paid_for_an_offline_machine_waits_and_goes_out_when_it_returns(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx)
    # Ordered while it was reachable (orders for an unreachable machine are refused).
    order_id = await order(ctx, slot=1)
    await _set_status(ctx, "OFFLINE")
    assert await pay(ctx, order_id, 8000) == "paid"
    assert await order_status(ctx, order_id) == "PENDING_DISPENSE"
    assert await outbox_rows(ctx, "dispense") == []

    online = StatusMessage.model_validate({"status": "ONLINE", "bootId": "b1"})
    assert await fleet.apply_status(ctx, "VM01", online)
    [command] = await outbox_rows(ctx, "dispense")
    assert command["body"]["orderId"] == order_id
    assert [r["body"] for r in await outbox_rows(ctx, "sync")] == [{"cmd": "sync"}]


async def test_a_machine_in_maintenance_gets_no_commands(ctx: ServiceContext) -> None:
    await quick_shop(ctx)
    # Ordered while it was reachable (orders for an unreachable machine are refused).
    order_id = await order(ctx, slot=1)
    await _set_status(ctx, "MAINTENANCE")
    await pay(ctx, order_id, 8000)
    assert await outbox_rows(ctx, "dispense") == []
    assert await order_status(ctx, order_id) == "PENDING_DISPENSE"


async def test_a_unit_that_waits_past_its_queue_deadline_is_failed_and_owed_a_refund(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx, stock=3)
    # Ordered while it was reachable (orders for an unreachable machine are refused).
    order_id = await order(ctx, slot=1)
    await _set_status(ctx, "OFFLINE")
    await pay(ctx, order_id, 8000)
    clock.advance(ctx.tunables.queue_ttl_s - 1)
    assert await commands.give_up_due(ctx) == 0
    clock.advance(2)
    assert await commands.give_up_due(ctx) == 1

    [unit] = await rows(ctx, dispenses)
    assert (unit["status"], unit["error_message"], unit["attempts"]) == ("FAILED", "EXPIRED", 0)
    [refund] = await rows(ctx, refunds)
    assert (refund["amount"], refund["refund_key"]) == (8000, f"refund-{unit['id']}")
    assert await order_status(ctx, order_id) == "FAILED"
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (3, 0)
    # Coming back later sends nothing for the refunded unit.
    await fleet.apply_status(ctx, "VM01", StatusMessage.model_validate({"status": "ONLINE"}))
    assert await outbox_rows(ctx, "dispense") == []


async def test_a_machine_silent_for_three_telemetry_intervals_is_marked_offline(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    await _set_status(ctx, "ONLINE")
    interval = 60  # the machines table default
    clock.advance(3 * interval - 1)
    assert await fleet.mark_silent_machines_offline(ctx) == []
    clock.advance(2)
    assert await fleet.mark_silent_machines_offline(ctx) == ["VM01"]
    [machine] = await rows(ctx, machines)
    assert (machine["status"], machine["updated_at"]) == ("OFFLINE", clock())
    [event] = await rows(ctx, machine_events)
    assert (event["event_type"], event["status"], event["severity"], event["message"]) == (
        "STATUS",
        "OFFLINE",
        "warning",
        "machine VM01 is OFFLINE (silent for 3 telemetry intervals)",
    )
    # Already offline: nothing more is recorded.
    clock.advance(600)
    assert await fleet.mark_silent_machines_offline(ctx) == []


async def test_a_machine_heard_from_after_going_offline_is_online_again_with_a_sync(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    await _set_status(ctx, "ONLINE")
    # Not offline: nothing to do.
    assert await fleet.back_online(ctx, "VM01", clock()) is False
    clock.advance(5)
    went_offline = clock()
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(machines).values(status="OFFLINE", updated_at=went_offline))
    # Heard from before it went offline: that message does not bring it back.
    assert await fleet.back_online(ctx, "VM01", went_offline - timedelta(seconds=1)) is False
    assert await rows(ctx, machine_events) == []
    assert await outbox_rows(ctx, "sync") == []
    clock.advance(1)
    assert await fleet.back_online(ctx, "VM01", went_offline) is True
    [machine] = await rows(ctx, machines)
    assert (machine["status"], machine["updated_at"]) == ("ONLINE", clock())
    [event] = await rows(ctx, machine_events)
    assert (event["event_type"], event["status"], event["severity"], event["message"]) == (
        "STATUS",
        "ONLINE",
        "info",
        "machine VM01 is ONLINE (heard from again)",
    )
    [sync] = await outbox_rows(ctx, "sync")
    assert (sync["topic"], sync["body"]) == (
        f"{ctx.tunables.topic_prefix}/VM01/command",
        {"cmd": "sync"},
    )


@pytest.mark.parametrize("meanwhile", ["heard-from", "maintenance"])
async def test_a_machine_heard_from_or_set_aside_after_the_scan_is_not_marked_offline(
    ctx: ServiceContext, clock: FakeClock, meanwhile: str
) -> None:
    await quick_shop(ctx)
    await _set_status(ctx, "ONLINE")
    [scanned] = await rows(ctx, machines)
    clock.advance(1)
    # Between the silence scan and the update: a message, or an operator's status (which is
    # no sign of life: last_seen_at stays).
    if meanwhile == "heard-from":
        await _set_status(ctx, "ONLINE")
    else:
        async with ctx.engine.begin() as conn:
            await conn.execute(sa.update(machines).values(status="MAINTENANCE"))
    [before] = await rows(ctx, machines)
    assert await fleet._mark_offline(ctx, "VM01", scanned["last_seen_at"]) is False
    assert await rows(ctx, machines) == [before]
    assert await rows(ctx, machine_events) == []


async def test_a_devices_status_changes_are_recorded_as_events_with_what_it_sent(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    assert (
        await fleet.apply_status(ctx, "nope", StatusMessage.model_validate({"status": "ONLINE"}))
        is False
    )
    sent = [
        {"status": "ONLINE", "fw": "1.2.0", "bootId": "b1"},
        {"status": "ONLINE", "bootId": "b1"},  # nothing new: no event
        {"status": "MAINTENANCE", "door": "open"},
    ]
    for body in sent:
        await fleet.apply_status(ctx, "VM01", StatusMessage.model_validate(body))
        clock.advance(1)
    events = await rows(ctx, machine_events)
    assert [
        (e["event_type"], e["status"], e["severity"], e["message"], e["details"]) for e in events
    ] == [
        (
            "STATUS",
            "ONLINE",
            "info",
            "machine VM01 is ONLINE (boot b1)",
            {"status": "ONLINE", "fw": "1.2.0", "rssi": None, "door": None, "bootId": "b1"},
        ),
        (
            "STATUS",
            "MAINTENANCE",
            "warning",
            "machine VM01 is MAINTENANCE",
            {"status": "MAINTENANCE", "fw": None, "rssi": None, "door": "open", "bootId": None},
        ),
    ]


async def test_a_machine_coming_online_with_nothing_waiting_gets_a_sync_and_wakes_the_publisher(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx)
    await _set_status(ctx, "OFFLINE")
    woken: list[None] = []
    ctx = dataclasses.replace(ctx, wake_outbox=lambda: woken.append(None))
    online = StatusMessage.model_validate({"status": "ONLINE"})
    assert await fleet.apply_status(ctx, "VM01", online) is True
    assert [r["body"] for r in await outbox_rows(ctx, "sync")] == [{"cmd": "sync"}]
    assert await outbox_rows(ctx, "dispense") == []
    assert len(woken) == 1
    # Already ONLINE, same boot: nothing queued, nobody woken.
    assert await fleet.apply_status(ctx, "VM01", online) is False
    assert len(woken) == 1
