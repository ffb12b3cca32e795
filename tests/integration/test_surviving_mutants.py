"""The four mutants that once survived every tier (issue 14), each killed by a test here."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.integration.helpers import (
    SERVER_KEY,
    order,
    outbox_rows,
    pay,
    quick_shop,
    report,
    rows,
    slot_row,
)
from vendhub.adapters.db.tables import dispenses, refunds
from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.services import commands, dispatch
from vendhub.services import refunds as refund_service
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.services.ports import RefundRequest, RefundResult

pytestmark = pytest.mark.integration

POLICY = PaymentPolicy(lease_s=120)


async def paid_unit(ctx: ServiceContext) -> tuple[str, dict[str, Any]]:
    await quick_shop(ctx, stock=5)
    order_id = await order(ctx, slot=1)
    assert await pay(ctx, order_id, 8000) == "paid"
    [unit] = await rows(ctx, dispenses)
    return order_id, unit


async def owed_refund(ctx: ServiceContext, clock: FakeClock) -> dict[str, Any]:
    await paid_unit(ctx)
    clock.advance(ctx.tunables.command_ttl_s + 60)
    assert await commands.give_up_due(ctx) == 1
    [refund] = await rows(ctx, refunds)
    return refund


class RacingGateway(SandboxProvider):
    """Pays refunds, and while the first call is in progress a second worker tries the same
    refund (what another replica's pass does at the same moment)."""

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(SERVER_KEY, "http://127.0.0.1:3001")
        self.ctx = ctx
        self.paid: list[str] = []
        self.second_worker: list[bool] = []

    async def refund(self, request: RefundRequest) -> RefundResult:
        self.paid.append(request.refund_key)
        if len(self.paid) == 1:
            [row] = await rows(self.ctx, refunds)
            self.second_worker.append(
                await refund_service.execute_refund(self.ctx, self, POLICY, row["id"])
            )
        return await super().refund(request)


async def test_a_refund_being_paid_by_one_worker_is_not_paid_again_by_another(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    refund = await owed_refund(ctx, clock)
    gateway = RacingGateway(ctx)
    assert await refund_service.execute_refund(ctx, gateway, POLICY, refund["id"])
    assert gateway.second_worker == [False]
    assert gateway.paid == [refund["refund_key"]]
    # Paid: no later pass, even after the lease, pays it again.
    clock.advance(POLICY.lease_s + 1)
    assert not await refund_service.execute_refund(ctx, gateway, POLICY, refund["id"])
    assert await refund_service.execute_due_refunds(ctx, gateway, POLICY) == 0
    assert gateway.paid == [refund["refund_key"]]
    [row] = await rows(ctx, refunds)
    assert (row["status"], row["attempts"]) == ("SUCCEEDED", 1)


async def test_a_refund_whose_claim_lapsed_is_taken_again_by_the_next_worker(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    refund = await owed_refund(ctx, clock)
    # A worker claimed it and died before paying.
    assert await refund_service._claim(ctx, POLICY, refund["id"]) is not None
    assert await refund_service._claim(ctx, POLICY, refund["id"]) is None
    clock.advance(POLICY.lease_s - 1)
    assert await refund_service._claim(ctx, POLICY, refund["id"]) is None
    clock.advance(2)
    claimed = await refund_service._claim(ctx, POLICY, refund["id"])
    assert claimed is not None and claimed["attempts"] == 2


class Interrupted(RuntimeError):
    pass


async def test_a_result_the_database_fails_to_apply_is_not_acknowledged(
    ctx: ServiceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, unit = await paid_unit(ctx)
    [command] = await outbox_rows(ctx, "dispense")
    # Both ways a result settles a unit (one statement, or read then update) end here.
    original = dispatch._after_settling

    async def fails_after_applying(*args: Any, **kwargs: Any) -> Any:
        await original(*args, **kwargs)
        raise Interrupted("the connection dropped before commit")

    monkeypatch.setattr(dispatch, "_after_settling", fails_after_applying)
    with pytest.raises(Interrupted):
        await report(ctx, command["body"])
    # Nothing recorded, so the device must keep its result and re-send it: no ack.
    assert await outbox_rows(ctx, "ack") == []
    [still] = await rows(ctx, dispenses)
    assert still["status"] == "IN_FLIGHT"
    assert (await slot_row(ctx, 1))["current_stock"] == 5

    monkeypatch.setattr(dispatch, "_after_settling", original)
    assert await report(ctx, command["body"]) == "APPLIED"
    assert [r["body"] for r in await outbox_rows(ctx, "ack")] == [
        {"cmd": "ack", "commandId": unit["id"]}
    ]
    assert (await slot_row(ctx, 1))["current_stock"] == 4


async def test_a_command_not_sent_before_its_expires_at_is_never_sent(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    _, unit = await paid_unit(ctx)
    # The broker was down: the command sat in the outbox past its expiresAt.
    clock.advance((unit["expires_at"] - clock()).total_seconds() + 0.001)
    [item] = [i for i in await commands.pending(ctx) if i.kind == "dispense"]
    assert not item.sendable
    # One millisecond earlier it would still have gone out.
    await commands.release(ctx, [item])
    clock.advance(-0.002)
    [item] = [i for i in await commands.pending(ctx) if i.kind == "dispense"]
    assert item.sendable
