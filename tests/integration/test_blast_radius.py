"""Periodic passes handle rows one by one: a failing row is logged, counted, retried later."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import FakeClock, unique
from tests.integration.helpers import SERVER_KEY, order_status, outbox_rows, pay, quick_shop, rows
from tests.integration.test_mqtt_intake import device, running
from vendhub.adapters.db.tables import dispenses, machines, outbox, payments, refunds
from vendhub.adapters.payments.sandbox import SandboxProvider
from vendhub.metrics import Metrics
from vendhub.services import commands, fleet, reconcile
from vendhub.services import orders as order_service
from vendhub.services import refunds as refund_service
from vendhub.services.checkout import checkout
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.services.demo import seed_demo
from vendhub.services.orders import OrderLine
from vendhub.services.ports import Notification, RefundRequest, RefundResult
from vendhub.workers import payment_jobs, timers

pytestmark = pytest.mark.integration

POLICY = PaymentPolicy(reconcile_after_s=120, reconcile_every_s=60, lease_s=120)


class Broken(RuntimeError):
    """What a bug or a poisoned row raises in the middle of a pass."""


class FlakyGateway(SandboxProvider):
    """The sandbox, except that every call about `poisoned` orders raises."""

    def __init__(self) -> None:
        super().__init__(SERVER_KEY, "http://127.0.0.1:3001")
        self.poisoned: set[str] = set()
        self.asked: list[str] = []

    def _check(self, order_id: str) -> None:
        self.asked.append(order_id)
        if order_id in self.poisoned:
            raise Broken(f"cannot handle order {order_id}")

    async def fetch_status(self, order_id: str) -> Notification | None:
        self._check(order_id)
        return await super().fetch_status(order_id)

    async def expire(self, order_id: str) -> None:
        self._check(order_id)

    async def refund(self, request: RefundRequest) -> RefundResult:
        self._check(request.order_id)
        return await super().refund(request)


@pytest.fixture
def failed(ctx: ServiceContext) -> list[str]:
    """The passes' failed rows, as /metrics counts them (ctx.row_failed)."""
    seen: list[str] = []
    ctx.row_failed = seen.append
    return seen


async def two_machines(ctx: ServiceContext) -> None:
    await quick_shop(ctx)
    await quick_shop(ctx, machine_id="VM02")
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(machines).values(status="ONLINE", last_seen_at=ctx.clock()))


async def order_at(ctx: ServiceContext, machine_id: str, provider: SandboxProvider) -> str:
    return await checkout(
        ctx,
        provider,
        machine_id,
        [OrderLine(slot_number=1)],
        customer_phone=None,
        payment_method=None,
    )


async def paid_orders(ctx: ServiceContext) -> dict[str, str]:
    """One paid order per machine, its unit in flight; returns machine → order."""
    placed = {m: await order_at(ctx, m, FlakyGateway()) for m in ("VM01", "VM02")}
    for order_id in placed.values():
        assert await pay(ctx, order_id, 8000) == "paid"
    return placed


async def unit_of(ctx: ServiceContext, order_id: str) -> dict[str, Any]:
    [unit] = await rows(ctx, dispenses, dispenses.c.order_id == order_id)
    return unit


def failing_for(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    poisoned: Callable[[tuple[Any, ...]], bool],
) -> list[bool]:
    """Replace module.name by a wrapper raising Broken when `poisoned(args)`; returns a switch
    (pop it to heal the row)."""
    original: Callable[..., Awaitable[Any]] = getattr(module, name)
    switch = [True]

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if switch and poisoned(args):
            raise Broken("poisoned row")
        return await original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return switch


async def test_a_unit_whose_give_up_fails_does_not_stop_other_machines_give_ups(
    ctx: ServiceContext, clock: FakeClock, failed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await two_machines(ctx)
    placed = await paid_orders(ctx)
    switch = failing_for(
        monkeypatch, commands, "settle_unit", lambda args: args[2]["machine_id"] == "VM01"
    )
    clock.advance(ctx.tunables.command_ttl_s + 60)
    assert await commands.give_up_due(ctx) == 1
    assert (await unit_of(ctx, placed["VM01"]))["status"] == "IN_FLIGHT"
    assert (await unit_of(ctx, placed["VM02"]))["status"] == "FAILED"
    assert failed == ["give_up"]
    # Healed: the next pass retries the row that failed.
    switch.pop()
    assert await commands.give_up_due(ctx) == 1
    assert (await unit_of(ctx, placed["VM01"]))["status"] == "FAILED"
    assert failed == ["give_up"]


async def test_a_unit_whose_retransmission_fails_does_not_stop_the_others(
    ctx: ServiceContext, clock: FakeClock, failed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await two_machines(ctx)
    placed = await paid_orders(ctx)
    sent = await outbox_rows(ctx, "dispense")
    from vendhub.services.commands import OutboxItem, mark_done
    from vendhub.services.outbox import OutboxKind

    # The publisher confirmed both first copies: each unit now waits for its result.
    await mark_done(
        ctx,
        [
            OutboxItem(
                r["id"],
                OutboxKind.DISPENSE,
                r["machine_id"],
                r["topic"],
                b"",
                1,
                False,
                r["dispense_id"],
                timeout_ms=2150,
                order_id=r["body"]["orderId"],
            )
            for r in sent
        ],
        [],
    )
    switch = failing_for(monkeypatch, commands, "enqueue", lambda args: args[2] == "VM02")
    clock.advance(10)
    assert await commands.retransmit_due(ctx) == 1
    copies = [r["dispense_id"] for r in await outbox_rows(ctx, "dispense")]
    vm01, vm02 = [await unit_of(ctx, placed[m]) for m in ("VM01", "VM02")]
    assert copies.count(vm01["id"]) == 2 and copies.count(vm02["id"]) == 1
    assert failed == ["retransmit"]
    switch.pop()
    assert await commands.retransmit_due(ctx) == 1
    copies = [r["dispense_id"] for r in await outbox_rows(ctx, "dispense")]
    assert copies.count(vm02["id"]) == 2


async def test_an_order_whose_expiry_fails_does_not_stop_other_orders_expiring(
    ctx: ServiceContext, clock: FakeClock, failed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await two_machines(ctx)
    first = await order_at(ctx, "VM01", FlakyGateway())
    second = await order_at(ctx, "VM02", FlakyGateway())
    switch = failing_for(monkeypatch, order_service, "close_unpaid", lambda a: a[2] == first)
    clock.advance(ctx.tunables.order_ttl_s + 1)
    assert await order_service.expire_due_orders(ctx) == [second]
    assert await order_status(ctx, first) == "PENDING"
    assert failed == ["expire"]
    switch.pop()
    assert await order_service.expire_due_orders(ctx) == [first]


async def test_a_machine_whose_presence_update_fails_does_not_stop_the_others(
    ctx: ServiceContext, clock: FakeClock, failed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await two_machines(ctx)
    switch = failing_for(monkeypatch, fleet, "_mark_offline", lambda args: args[1] == "VM01")
    clock.advance(3 * 60 + 1)
    assert await fleet.mark_silent_machines_offline(ctx) == ["VM02"]
    assert failed == ["presence"]
    switch.pop()
    assert await fleet.mark_silent_machines_offline(ctx) == ["VM01"]
    assert {m["id"]: m["status"] for m in await rows(ctx, machines)} == {
        "VM01": "OFFLINE",
        "VM02": "OFFLINE",
    }


async def test_a_refund_whose_payout_raises_does_not_stop_other_refunds_and_is_retried(
    ctx: ServiceContext, clock: FakeClock, failed: list[str]
) -> None:
    await two_machines(ctx)
    placed = await paid_orders(ctx)
    clock.advance(ctx.tunables.command_ttl_s + 60)
    assert await commands.give_up_due(ctx) == 2
    gateway = FlakyGateway()
    gateway.poisoned.add(placed["VM01"])
    assert await refund_service.execute_due_refunds(ctx, gateway, POLICY) == 1
    status = {r["order_id"]: r["status"] for r in await rows(ctx, refunds)}
    assert status == {placed["VM01"]: "PENDING", placed["VM02"]: "SUCCEEDED"}
    assert failed == ["refunds"]
    # Retried once its claim lapses (a crash mid-call looks the same to the other workers).
    gateway.poisoned.clear()
    assert await refund_service.execute_due_refunds(ctx, gateway, POLICY) == 0
    clock.advance(POLICY.lease_s + 1)
    assert await refund_service.execute_due_refunds(ctx, gateway, POLICY) == 1
    assert {r["status"] for r in await rows(ctx, refunds)} == {"SUCCEEDED"}


async def test_an_order_whose_reconciliation_raises_does_not_stop_other_orders(
    ctx: ServiceContext, clock: FakeClock, failed: list[str]
) -> None:
    await two_machines(ctx)
    gateway = FlakyGateway()
    first = await order_at(ctx, "VM01", gateway)
    second = await order_at(ctx, "VM02", gateway)
    gateway.poisoned.add(first)
    clock.advance(POLICY.reconcile_after_s + 1)
    assert await reconcile.reconcile_pending(ctx, gateway, POLICY) == {}
    assert sorted(gateway.asked) == sorted([first, second])
    assert failed == ["reconcile"]
    checked = {p["order_id"]: p["check_count"] for p in await rows(ctx, payments)}
    assert checked == {first: 1, second: 1}


async def test_an_order_whose_gateway_close_raises_does_not_stop_other_closes(
    ctx: ServiceContext, clock: FakeClock, failed: list[str]
) -> None:
    await two_machines(ctx)
    gateway = FlakyGateway()
    first = await order_at(ctx, "VM01", gateway)
    second = await order_at(ctx, "VM02", gateway)
    clock.advance(ctx.tunables.order_ttl_s + 1)
    assert sorted(await order_service.expire_due_orders(ctx)) == sorted([first, second])
    gateway.poisoned.add(first)
    assert await reconcile.close_at_gateway_due(ctx, gateway, POLICY) == 1
    closed = {p["order_id"]: p["gateway_closed_at"] for p in await rows(ctx, payments)}
    assert closed[first] is None and closed[second] == clock()
    assert failed == ["gateway_close"]
    gateway.poisoned.clear()
    clock.advance(POLICY.lease_s + 1)
    assert await reconcile.close_at_gateway_due(ctx, gateway, POLICY) == 1


async def test_a_timer_pass_that_fails_as_a_whole_is_counted_in_metrics_and_the_next_runs(
    ctx: ServiceContext, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await two_machines(ctx)
    metrics = Metrics()
    ctx = dataclasses.replace(ctx, row_failed=metrics.row_failed)

    async def scan_fails(_: ServiceContext) -> list[str]:
        raise Broken("the scan query failed")

    monkeypatch.setattr(order_service, "expire_due_orders", scan_fails)
    clock.advance(3 * 60 + 1)
    await timers.tick(ctx, metrics)
    # Presence ran after the failed expiry pass.
    assert {m["status"] for m in await rows(ctx, machines)} == {"OFFLINE"}
    sample = metrics.registry.get_sample_value
    assert sample("vendhub_pass_row_failures_total", {"pass": "expire"}) == 1
    assert sample("vendhub_pass_row_failures_total", {"pass": "presence"}) is None


async def test_a_payment_job_that_fails_as_a_whole_does_not_stop_the_refunds(
    ctx: ServiceContext, clock: FakeClock, failed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await two_machines(ctx)
    placed = await paid_orders(ctx)
    clock.advance(ctx.tunables.command_ttl_s + 60)
    assert await commands.give_up_due(ctx) == 2

    async def scan_fails(*_: Any) -> dict[str, Any]:
        raise Broken("the scan query failed")

    monkeypatch.setattr(reconcile, "reconcile_pending", scan_fails)
    await payment_jobs.tick(ctx, FlakyGateway(), POLICY)
    assert {r["status"] for r in await rows(ctx, refunds)} == {"SUCCEEDED"}
    assert failed == ["reconcile"]
    assert {await order_status(ctx, o) for o in placed.values()} == {"REFUNDED"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_an_outbox_row_whose_publish_raises_does_not_hold_back_other_machines_commands(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    prefix = unique("t")
    async with (
        device(prefix, "VM01") as vm01,
        device(prefix, "VM02") as vm02,
        running(database_urls[backend], prefix) as container,
    ):
        ctx = container.ctx
        await seed_demo(ctx, "VM02")
        publish = container.mqtt.publish

        async def poisoned(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
            if topic == f"{prefix}/VM02/command" and b'"dispense"' in payload:
                raise Broken("cannot encode this one")
            await publish(topic, payload, qos, retain)

        container.mqtt.publish = poisoned  # type: ignore[method-assign]
        blocked = await order_at(ctx, "VM02", FlakyGateway())
        assert await pay(ctx, blocked, 8000) == "paid"
        fine = await order_at(ctx, "VM01", FlakyGateway())
        assert await pay(ctx, fine, 8000) == "paid"
        assert (await vm01.next_command("dispense"))["orderId"] == fine
        failures = container.metrics.registry.get_sample_value(
            "vendhub_pass_row_failures_total", {"pass": "outbox"}
        )
        assert failures is not None and failures >= 1
        [row] = await rows(ctx, outbox, outbox.c.machine_id == "VM02", outbox.c.kind == "dispense")
        assert row["published_at"] is None and row["claimed_until"] is not None
        while not vm02.commands.empty():
            assert vm02.commands.get_nowait().get("cmd") != "dispense"
        # Healed: once its lease lapses the row is claimed (and sent) again.
        container.mqtt.publish = publish  # type: ignore[method-assign]
        await container.publisher.flush_marks()  # VM01's command: its deferred mark
        later = dataclasses.replace(ctx, clock=lambda: row["claimed_until"] + timedelta(seconds=1))
        assert [i.id for i in await commands.pending(later)] == [row["id"]]
