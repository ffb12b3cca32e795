"""Dispense results on every database: applied at most once, failures refunded per unit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.helpers import (
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
from vendhub.adapters.db.tables import (
    dispense_results,
    dispenses,
    machine_events,
    refunds,
    stock_logs,
)
from vendhub.protocol.messages import DispenseResult
from vendhub.services import results
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.orders import OrderLine, get_order

pytestmark = pytest.mark.integration

COCA_COLA, AQUA = 8000, 5000  # slots 1 and 2 of the demo shop


async def paid_order(ctx: ServiceContext, slot: int = 1, quantity: int = 1) -> str:
    order_id = await order(ctx, slot=slot, quantity=quantity)
    assert await pay(ctx, order_id, COCA_COLA * quantity) == "paid"
    return order_id


async def apply(ctx: ServiceContext, machine_id: str = "VM01", **fields: Any) -> str:
    result = DispenseResult.model_validate(
        {"success": True, "dropDetected": True, "durationMs": 1500, "error": None, **fields}
    )
    return (await results.apply_result(ctx, machine_id, result, "{}")).value


async def commands(ctx: ServiceContext) -> list[dict[str, Any]]:
    return [r["body"] for r in await outbox_rows(ctx, "dispense")]


@pytest.fixture
async def stocked(ctx: ServiceContext) -> ServiceContext:
    await quick_shop(ctx, stock=5)
    return ctx


async def test_duplicate_result_decrements_stock_once_and_is_acked_again(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx)
    [command] = await commands(ctx)
    assert await report(ctx, command) == "APPLIED"
    assert await report(ctx, command) == "DUPLICATE"
    assert await report(ctx, command) == "DUPLICATE"
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (4, 0)
    logs = await rows(ctx, stock_logs, stock_logs.c.change_type == "DISPENSE")
    assert [(log["quantity_change"], log["dispense_id"]) for log in logs] == [
        (-1, command["commandId"])
    ]
    acks = [a["body"] for a in await outbox_rows(ctx, "ack")]
    assert acks == [{"cmd": "ack", "commandId": command["commandId"]}] * 3
    assert await order_status(ctx, order_id) == "COMPLETED"
    assert await count(ctx, refunds) == 0


async def test_concurrent_duplicate_results_apply_once(stocked: ServiceContext) -> None:
    ctx = stocked
    await paid_order(ctx)
    [command] = await commands(ctx)
    outcomes = await asyncio.gather(*(report(ctx, command) for _ in range(5)))
    assert sorted(outcomes) == ["APPLIED"] + ["DUPLICATE"] * 4
    assert (await slot_row(ctx, 1))["current_stock"] == 4
    assert await count(ctx, stock_logs, stock_logs.c.change_type == "DISPENSE") == 1


@pytest.mark.parametrize(
    ("success", "drop_detected", "error", "expected_error"),
    [(False, False, "JAM", "JAM"), (True, False, None, "NO_DROP")],
    ids=["motor-failed", "no-drop-seen"],
)
async def test_failed_unit_fails_order_releases_stock_and_owes_one_refund(
    stocked: ServiceContext,
    success: bool,
    drop_detected: bool,
    error: str | None,
    expected_error: str,
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx)
    [command] = await commands(ctx)
    fields = {"commandId": command["commandId"], "orderId": order_id, "slot": 1}
    outcome = await apply(ctx, success=success, dropDetected=drop_detected, error=error, **fields)
    assert outcome == "APPLIED"
    assert await apply(ctx, success=success, dropDetected=drop_detected, **fields) == "DUPLICATE"
    view = await get_order(ctx, order_id)
    assert view["status"] == "FAILED"
    [unit] = view["dispenses"]
    assert (unit["status"], unit["error_message"]) == ("FAILED", expected_error)
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (5, 0)
    assert await count(ctx, stock_logs, stock_logs.c.change_type == "DISPENSE") == 0
    [release] = await rows(ctx, stock_logs, stock_logs.c.change_type == "RELEASE")
    assert release["dispense_id"] == command["commandId"]
    [refund] = view["refunds"]
    assert (refund["amount"], refund["status"], refund["refund_key"]) == (
        COCA_COLA,
        "PENDING",
        f"refund-{command['commandId']}",
    )
    assert refund["dispense_id"] == command["commandId"]


async def test_seed_style_result_without_command_id_matches_the_unit_in_flight(
    stocked: ServiceContext, clock: Any
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx)
    [command] = await commands(ctx)
    clock.advance(2)  # the motor ran its 1500 ms
    assert await apply(ctx, orderId=order_id, slot=1) == "APPLIED"
    assert await order_status(ctx, order_id) == "COMPLETED"
    assert (await slot_row(ctx, 1))["current_stock"] == 4
    [ack] = await outbox_rows(ctx, "ack")
    assert ack["body"]["commandId"] == command["commandId"]
    # The same report again is a duplicate: acknowledged again, nothing changes.
    assert await apply(ctx, orderId=order_id, slot=1) == "DUPLICATE"
    assert (await slot_row(ctx, 1))["current_stock"] == 4
    # A different report with nothing in flight matches nothing.
    assert await apply(ctx, orderId=order_id, slot=1, durationMs=1700) == "UNKNOWN"
    assert (await slot_row(ctx, 1))["current_stock"] == 4


async def test_seed_style_result_for_the_wrong_slot_matches_nothing(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx)
    assert await apply(ctx, orderId=order_id, slot=2) == "UNKNOWN"
    assert await order_status(ctx, order_id) == "DISPENSING"
    assert (await slot_row(ctx, 1))["current_stock"] == 5


async def test_result_for_unknown_command_is_alerted_and_changes_nothing_else(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx)
    before = await rows(ctx, dispenses)
    outcome = await apply(ctx, commandId="01JD3Q8W7Z0000000000000000", orderId=order_id, slot=1)
    assert outcome == "UNKNOWN"
    [alert] = await rows(ctx, machine_events)
    assert (alert["machine_id"], alert["event_type"]) == ("VM01", "UNKNOWN_RESULT")
    assert await rows(ctx, dispenses) == before
    assert await outbox_rows(ctx, "ack") == []
    assert (await slot_row(ctx, 1))["current_stock"] == 5
    assert await order_status(ctx, order_id) == "DISPENSING"
    [audit] = await rows(ctx, dispense_results)
    assert audit["outcome"] == "UNKNOWN"


async def test_result_from_another_machine_for_a_real_command_is_unknown(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    await quick_shop(ctx, stock=5, machine_id="VM02")
    order_id = await paid_order(ctx)
    [command] = await commands(ctx)
    fields = {"commandId": command["commandId"], "orderId": order_id, "slot": 1}
    assert await apply(ctx, machine_id="VM02", **fields) == "UNKNOWN"
    [alert] = await rows(ctx, machine_events)
    assert alert["machine_id"] == "VM02"
    assert await outbox_rows(ctx, "ack") == []
    assert await order_status(ctx, order_id) == "DISPENSING"
    assert (await slot_row(ctx, 1))["current_stock"] == 5
    # The real machine's result still applies afterwards.
    assert await apply(ctx, **fields) == "APPLIED"


async def test_result_whose_order_does_not_match_its_command_is_unknown(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx)
    [command] = await commands(ctx)
    outcome = await apply(ctx, commandId=command["commandId"], orderId="ORD-OTHER", slot=1)
    assert outcome == "UNKNOWN"
    assert await order_status(ctx, order_id) == "DISPENSING"


async def test_quantity_two_sends_one_command_at_a_time_and_completes_after_both(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx, slot=1, quantity=2)
    [first] = await commands(ctx)
    assert await order_status(ctx, order_id) == "DISPENSING"
    assert await report(ctx, first) == "APPLIED"
    assert await order_status(ctx, order_id) == "DISPENSING"
    first_again, second = await commands(ctx)
    assert first_again == first and second["commandId"] != first["commandId"]
    assert await report(ctx, second) == "APPLIED"
    assert await order_status(ctx, order_id) == "COMPLETED"
    assert len(await commands(ctx)) == 2
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (3, 0)


async def test_two_line_order_dispenses_serially_and_refunds_only_the_failed_unit(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    lines = [OrderLine(slot_number=1), OrderLine(slot_number=2)]
    order_id = await checkout(
        ctx, sandbox(), "VM01", lines, customer_phone=None, payment_method=None
    )
    assert await pay(ctx, order_id, COCA_COLA + AQUA) == "paid"
    [first] = await commands(ctx)
    assert first["slot"] == 1
    assert await report(ctx, first) == "APPLIED"
    _, second = await commands(ctx)
    assert second["slot"] == 2
    assert await report(ctx, second, dropped=False, error="JAM") == "APPLIED"
    view = await get_order(ctx, order_id)
    assert view["status"] == "FAILED"
    [refund] = view["refunds"]
    assert (refund["dispense_id"], refund["amount"]) == (second["commandId"], AQUA)
    one, two = await slot_row(ctx, 1), await slot_row(ctx, 2)
    assert (one["current_stock"], one["reserved"]) == (4, 0)
    assert (two["current_stock"], two["reserved"]) == (5, 0)


async def test_second_order_on_the_same_machine_waits_for_the_first_result(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    first_order = await paid_order(ctx, slot=1)
    second_order = await paid_order(ctx, slot=1)
    [first] = await commands(ctx)
    assert first["orderId"] == first_order
    assert await report(ctx, first, dropped=False, error="MOTOR_TIMEOUT") == "APPLIED"
    _, second = await commands(ctx)
    assert second["orderId"] == second_order
    assert await order_status(ctx, first_order) == "FAILED"
    assert await order_status(ctx, second_order) == "DISPENSING"


async def test_drop_reported_after_give_up_counts_as_sold_holds_the_refund_and_moves_stock(
    stocked: ServiceContext, clock: Any
) -> None:
    from vendhub.services import commands as command_service

    ctx = stocked
    order_id = await paid_order(ctx)
    [command] = await commands(ctx)
    clock.advance(ctx.tunables.command_ttl_s + 10)
    assert await command_service.give_up_due(ctx) == 1
    assert (await slot_row(ctx, 1))["current_stock"] == 5
    assert await report(ctx, command) == "LATE"
    assert await order_status(ctx, order_id) == "COMPLETED"
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (4, 0)
    # The give-up itself was a failed vend; the late drop is the critical one.
    kinds = {e["event_type"]: e["severity"] for e in await rows(ctx, machine_events)}
    assert kinds == {"VEND_FAILED": "warning", "LATE_RESULT": "critical"}
    [alert] = [e for e in await rows(ctx, machine_events) if e["event_type"] == "LATE_RESULT"]
    assert command["commandId"] in alert["message"] and "held" in alert["message"]
    [refund] = await rows(ctx, refunds)
    assert (refund["status"], refund["amount"]) == ("HELD", COCA_COLA)
    # Told again, nothing moves twice.
    assert await report(ctx, command) == "DUPLICATE"
    assert (await slot_row(ctx, 1))["current_stock"] == 4
    assert await count(ctx, stock_logs, stock_logs.c.change_type == "DISPENSE") == 1


# --- conflicting results, copies without commandId, zero prices ----------------------------


@pytest.mark.parametrize(
    ("first_dropped", "error", "applied", "reported"),
    [
        (True, "JAM", "dropped", "failed (JAM)"),
        (False, "JAM", "failed", "dropped"),
        (True, None, "dropped", "failed (NO_DROP)"),
    ],
    ids=["drop-then-jam", "jam-then-drop", "drop-then-no-drop"],
)
async def test_opposite_results_for_one_command_raise_a_critical_alert(
    stocked: ServiceContext, first_dropped: bool, error: str | None, applied: str, reported: str
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx)
    [command] = await commands(ctx)
    assert await report(ctx, command, dropped=first_dropped, error=error) == "APPLIED"
    before = await get_order(ctx, order_id)
    assert await report(ctx, command, dropped=not first_dropped, error=error) == "CONFLICT"
    # A jam applied first also left its (warning) VEND_FAILED alert; one critical alert.
    [alert] = await rows(ctx, machine_events, machine_events.c.severity == "critical")
    assert (alert["event_type"], alert["severity"], alert["machine_id"]) == (
        "CONFLICTING_RESULT",
        "critical",
        "VM01",
    )
    assert alert["message"] == (
        f"machine VM01 reported command {command['commandId']} of order {order_id} "
        f"{reported}, but it was already {applied}; the first result stands"
    )
    assert alert["details"] == {
        "order_id": order_id,
        "command_id": command["commandId"],
        "applied": applied,
        "reported": reported,
    }
    # The first result stands: nothing else moves.
    after = await get_order(ctx, order_id)
    assert (after["status"], after["refunds"]) == (before["status"], before["refunds"])
    assert [u["status"] for u in after["dispenses"]] == [u["status"] for u in before["dispenses"]]
    # A repeat of the first result is a plain duplicate.
    assert await report(ctx, command, dropped=first_dropped, error=error) == "DUPLICATE"


async def test_a_result_without_command_id_sooner_than_its_own_duration_is_a_copy(
    stocked: ServiceContext, clock: Any
) -> None:
    ctx = stocked
    order_id = await paid_order(ctx, quantity=2)
    fields = {"orderId": order_id, "slot": 1}
    clock.advance(2)
    assert await apply(ctx, **fields, durationMs=1500) == "APPLIED"
    # The second unit went out just now; a report of a 1500 ms run cannot be its own.
    clock.advance(0.2)
    assert await apply(ctx, **fields, durationMs=1499) == "COPY"
    units = (await get_order(ctx, order_id))["dispenses"]
    assert [u["status"] for u in units] == ["DROPPED", "IN_FLIGHT"]
    assert (await slot_row(ctx, 1))["current_stock"] == 4
    clock.advance(2)
    assert await apply(ctx, **fields, durationMs=1480) == "APPLIED"
    assert await order_status(ctx, order_id) == "COMPLETED"
    assert (await slot_row(ctx, 1))["current_stock"] == 3


async def zero_price(ctx: ServiceContext, machine_id: str = "VM01") -> None:
    from vendhub.adapters.db.tables import slots

    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(slots)
            .where(slots.c.machine_id == machine_id, slots.c.slot_number == 1)
            .values(price_override=0)
        )


async def test_a_failed_zero_price_unit_owes_no_refund_and_the_machine_goes_on(
    stocked: ServiceContext,
) -> None:
    ctx = stocked
    await zero_price(ctx)
    free = await order(ctx, slot=1)
    paid = await order(ctx, slot=2)
    assert await pay(ctx, free, 0) == "paid"
    assert await pay(ctx, paid, AQUA) == "paid"
    [first] = await commands(ctx)
    assert await report(ctx, first, dropped=False, error="JAM") == "APPLIED"
    assert await order_status(ctx, free) == "FAILED"
    assert await count(ctx, refunds) == 0
    _, second = await commands(ctx)
    assert second["orderId"] == paid
    assert (await slot_row(ctx, 1))["reserved"] == 0


async def test_a_zero_price_unit_given_up_does_not_stop_the_timer_pass_for_other_machines(
    stocked: ServiceContext, clock: Any
) -> None:
    from tests.integration.helpers import quick_shop
    from vendhub.metrics import Metrics
    from vendhub.workers import timers

    ctx = stocked
    await quick_shop(ctx, stock=5, machine_id="VM02")
    await zero_price(ctx)
    free = await order(ctx, slot=1)
    assert await pay(ctx, free, 0) == "paid"
    clock.advance(1)
    other = await checkout(
        ctx, sandbox(), "VM02", [OrderLine(slot_number=1)], customer_phone=None, payment_method=None
    )
    assert await pay(ctx, other, COCA_COLA) == "paid"
    clock.advance(ctx.tunables.command_ttl_s + 30)
    await timers.tick(ctx, Metrics())
    assert await order_status(ctx, free) == "FAILED"
    assert await order_status(ctx, other) == "FAILED"
    [refund] = await rows(ctx, refunds)
    assert (refund["order_id"], refund["amount"]) == (other, COCA_COLA)
    assert await count(ctx, dispenses, dispenses.c.status == "IN_FLIGHT") == 0
