"""Results that arrive together: applied in one transaction, acked after its commit."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from tests.integration.helpers import order_status, outbox_rows, pay, quick_shop, sandbox
from vendhub.protocol.messages import DispenseResult
from vendhub.services import results
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.orders import OrderLine
from vendhub.services.outbox import OutboxItem

pytestmark = pytest.mark.integration


async def _two_units_in_flight(ctx: ServiceContext) -> list[tuple[str, dict[str, Any]]]:
    """One paid order on each of VM01 and VM02; their dispense commands."""
    paid = []
    for machine_id in ("VM02", "VM01"):
        await quick_shop(ctx, machine_id=machine_id)
        order_id = await checkout(
            ctx,
            sandbox(),
            machine_id,
            [OrderLine(slot_number=1)],
            customer_phone=None,
            payment_method=None,
        )
        assert await pay(ctx, order_id, 8000) == "paid"
        paid.append(order_id)
    commands = {r["body"]["orderId"]: r for r in await outbox_rows(ctx, "dispense")}
    return [(commands[o]["machine_id"], commands[o]["body"]) for o in paid]


def _result(command: dict[str, Any], dropped: bool = True) -> DispenseResult:
    return DispenseResult.model_validate(
        {
            "commandId": command["commandId"],
            "orderId": command["orderId"],
            "slot": command["slot"],
            "success": dropped,
            "dropDetected": dropped,
            "durationMs": 1500,
            "error": None if dropped else "JAM",
        }
    )


async def test_results_that_arrive_together_are_applied_in_one_transaction_then_acked(
    ctx: ServiceContext,
) -> None:
    units = await _two_units_in_flight(ctx)
    handed: list[list[OutboxItem]] = []
    ctx.hand_off = lambda items: handed.append(list(items))
    began: list[object] = []

    def begin(conn: object) -> None:
        began.append(conn)

    sync_engine = ctx.engine.sync_engine
    event.listen(sync_engine, "begin", begin)
    try:
        outcomes = await results.apply_results(
            ctx,
            [(m, _result(c), "{}") for m, c in units] + [(units[0][0], _result(units[0][1]), "{}")],
        )
    finally:
        event.remove(sync_engine, "begin", begin)
    # In arrival order; the copy of the first result in the same batch is a duplicate.
    assert [o.value for o in outcomes] == ["APPLIED", "APPLIED", "DUPLICATE"]
    assert len(began) == 1
    # One hand-off after the commit, with an ack per result (each one's row committed).
    [acks] = handed
    assert sorted(a.kind.value for a in acks) == ["ack", "ack", "ack"]
    assert {a.machine_id for a in acks} == {"VM01", "VM02"}
    committed = {r["id"] for r in await outbox_rows(ctx, "ack")}
    assert {a.id for a in acks} == committed
    for _, command in units:
        assert await order_status(ctx, command["orderId"]) == "COMPLETED"


async def test_a_batch_that_fails_is_applied_result_by_result_and_only_the_bad_one_is_lost(
    ctx: ServiceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    units = await _two_units_in_flight(ctx)
    bad = units[0][1]["commandId"]
    real = results._apply_and_record

    async def failing_for_one(ctx: Any, conn: Any, machine_id: str, result: Any, raw: str) -> Any:
        # Fault injection at the seam: this one result's transaction fails on the database.
        if result.command_id == bad:
            raise RuntimeError("injected failure")
        return await real(ctx, conn, machine_id, result, raw)

    monkeypatch.setattr(results, "_apply_and_record", failing_for_one)
    outcomes = await results.apply_results(ctx, [(m, _result(c), "{}") for m, c in units])
    assert [o.value for o in outcomes] == ["APPLIED"]
    assert await order_status(ctx, units[1][1]["orderId"]) == "COMPLETED"
    assert await order_status(ctx, units[0][1]["orderId"]) == "DISPENSING"
    # The failed one is not acked: its device re-sends it, and then it applies.
    assert [a["body"]["commandId"] for a in await outbox_rows(ctx, "ack")] == [
        units[1][1]["commandId"]
    ]
    monkeypatch.undo()
    assert (await results.apply_result(ctx, units[0][0], _result(units[0][1]), "{}")).value == (
        "APPLIED"
    )
