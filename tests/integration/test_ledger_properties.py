"""Property: whatever notifications, results, timers and operators do to one order, books hold."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import FakeClock, _wipe
from tests.integration.helpers import SERVER_KEY, quick_shop, sandbox
from vendhub.adapters.db.engine import create_engine
from vendhub.adapters.db.tables import dispense_results, dispenses, orders, refunds, slots
from vendhub.adapters.payments import midtrans_notification
from vendhub.domain.model import FINAL_ORDER_STATUSES, OrderStatus
from vendhub.protocol.messages import DispenseResult
from vendhub.services import commands, payments, results
from vendhub.services import orders as order_service
from vendhub.services import refunds as ledger
from vendhub.services.checkout import checkout
from vendhub.services.context import PaymentPolicy, ServiceContext, Tunables
from vendhub.services.errors import Conflict
from vendhub.services.orders import OrderLine
from vendhub.services.ports import (
    GatewayError,
    Notification,
    PaymentInstructions,
    PaymentRequest,
    RefundRequest,
    RefundResult,
)

# Bounded by max_examples; the timeout only guards against a machine shared and busy.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STOCK = 5
POLICY = PaymentPolicy(refund_max_attempts=2, backoff_base_s=1, backoff_max_s=4, lease_s=1)


@dataclass
class FakeGateway:
    """Our PaymentProvider interface, kept honest: it never refunds more than it was paid,
    a refund_key acts once, and it refuses when told to."""

    paid: int = 0
    refunds: list[dict[str, Any]] = field(default_factory=list)
    refuse: int = 0
    name: str = "fake"

    @property
    def refunded(self) -> int:
        return sum(int(r["refund_amount"]) for r in self.refunds)

    async def create_payment(self, request: PaymentRequest) -> PaymentInstructions:
        return PaymentInstructions(provider=self.name)

    def verify_notification(self, headers: Any, body: bytes) -> Notification:
        return midtrans_notification.verify(body, SERVER_KEY)

    async def fetch_status(self, order_id: str) -> Notification | None:
        return None

    async def cancel(self, order_id: str) -> None:
        return None

    async def expire(self, order_id: str) -> None:
        return None

    async def refund(self, request: RefundRequest) -> RefundResult:
        if any(r["refund_key"] == request.refund_key for r in self.refunds):
            return RefundResult(request.refund_key, request.amount)  # idempotent replay
        if self.refuse > 0:
            self.refuse -= 1
            raise GatewayError("412 refused", retryable=False, status_code="412")
        if self.refunded + request.amount > self.paid:
            raise GatewayError("412 exceeds what was paid", retryable=False, status_code="412")
        self.refunds.append({"refund_key": request.refund_key, "refund_amount": request.amount})
        return RefundResult(request.refund_key, request.amount)

    def dashboard_refund(self, amount: int) -> None:
        amount = min(amount, self.paid - self.refunded)
        if amount > 0:
            self.refunds.append(
                {"refund_key": None, "refund_amount": amount, "id": len(self.refunds) + 1}
            )


SETTLE = st.tuples(st.just("settle"), st.sampled_from(["t1", "t2"]))
RESULT = st.tuples(st.just("result"), st.booleans(), st.booleans())
ADVANCE = st.tuples(st.just("advance"), st.sampled_from([1, 30, 200, 1000]))
REFUNDS = st.tuples(st.just("refunds"), st.integers(min_value=0, max_value=2))
RESULT_JAM = ("result", False, True)
# The order mostly gets paid and dispensed; everything else happens now and then.
ACTIONS = st.one_of(
    SETTLE,
    SETTLE,
    RESULT,
    RESULT,
    RESULT,
    RESULT,
    ADVANCE,
    ADVANCE,
    REFUNDS,
    st.tuples(
        st.just("capture"), st.sampled_from(["t1", "t2"]), st.sampled_from(["challenge", "accept"])
    ),
    st.tuples(st.just("close_note"), st.sampled_from(["expire", "deny"])),
    st.tuples(st.just("repeat")),
    st.tuples(st.just("late_drop")),
    st.tuples(st.just("echo")),
    st.tuples(st.just("dashboard")),
    st.tuples(st.just("dashboard_all")),
    st.tuples(st.just("manual")),
    st.tuples(st.just("release")),
    st.tuples(st.just("cancel_held")),
    st.tuples(st.just("cancel_order")),
)


@dataclass
class World:
    ctx: ServiceContext
    clock: FakeClock
    gateway: FakeGateway
    order_id: str
    total: int
    last_result: DispenseResult | None = None
    # Units whose refund had gone out before the machine reported them dropped, or whose
    # held refund an operator released: the only ones both vended and refunded.
    refunded_anyway: set[str] = field(default_factory=set)
    late: bool = False
    # An operator refunded the whole transaction by hand at the gateway, whatever dropped.
    outside: bool = False

    async def notify(self, status: str, tx: str, **changes: Any) -> None:
        body = midtrans_notification.build(
            self.order_id, self.total, status, SERVER_KEY, transaction_id=tx
        )
        body.update(changes)
        await payments.receive_notification(self.ctx, sandbox(), {}, json.dumps(body).encode())

    async def echo(self) -> None:
        """The gateway tells us every refund of the transaction so far."""
        if not self.gateway.refunds:
            return
        listed = [
            {
                "refund_key": r["refund_key"],
                "refund_amount": f"{r['refund_amount']}.00",
                **({"refund_chargeback_id": r["id"]} if "id" in r else {}),
            }
            for r in self.gateway.refunds
        ]
        full = self.gateway.refunded >= self.total
        await self.notify(
            "refund" if full else "partial_refund",
            "t1",
            refunds=listed,
            refund_amount=f"{self.gateway.refunded}.00",
        )

    async def units(self) -> list[dict[str, Any]]:
        async with self.ctx.engine.connect() as conn:
            stmt = sa.select(dispenses).where(dispenses.c.order_id == self.order_id)
            return [dict(r) for r in (await conn.execute(stmt.order_by(dispenses.c.id))).mappings()]

    async def send(self, result: DispenseResult) -> None:
        await results.apply_result(self.ctx, "VM01", result, "{}")

    async def timers(self) -> None:
        await order_service.expire_due_orders(self.ctx)
        await commands.retransmit_due(self.ctx)
        await commands.give_up_due(self.ctx)

    async def pay_refunds(self) -> None:
        await ledger.execute_due_refunds(self.ctx, self.gateway, POLICY)


async def act(world: World, action: tuple[Any, ...]) -> None:
    kind = action[0]
    gw = world.gateway
    if kind in ("settle", "capture"):
        status = "settlement" if kind == "settle" else "capture"
        changes = {"fraud_status": action[2]} if kind == "capture" else {}
        # The gateway took the money once per transaction, whatever it tells us.
        if (kind == "settle" or action[2] == "accept") and action[1] not in gw.__dict__.setdefault(
            "txs", set()
        ):
            gw.__dict__["txs"].add(action[1])
            gw.paid += world.total
        await world.notify(status, action[1], **changes)
    elif kind == "close_note":
        await world.notify(action[1], "t1")
    elif kind == "result":
        _, dropped, with_command_id = action
        in_flight = [u for u in await world.units() if u["status"] == "IN_FLIGHT"]
        if in_flight:
            unit = in_flight[0]
            world.clock.advance(2)  # the motor runs before the machine answers
            result = DispenseResult.model_validate(
                {
                    **({"commandId": unit["id"]} if with_command_id else {}),
                    "orderId": world.order_id,
                    "slot": unit["slot_number"],
                    "success": dropped,
                    "dropDetected": dropped,
                    "durationMs": 1500,
                    "error": None if dropped else "JAM",
                }
            )
            world.last_result = result
            await world.send(result)
    elif kind == "repeat" and world.last_result is not None:
        await world.send(world.last_result)  # QoS 1 redelivery, at any later time
    elif kind == "late_drop":
        given_up = [
            u for u in await world.units() if u["status"] == "FAILED" and u["success"] is None
        ]
        if given_up:
            unit = given_up[0]
            world.late = True
            async with world.ctx.engine.connect() as conn:
                status = await conn.scalar(
                    sa.select(refunds.c.status).where(refunds.c.dispense_id == unit["id"])
                )
            if status == "SUCCEEDED":
                world.refunded_anyway.add(unit["id"])
            result = DispenseResult.model_validate(
                {
                    "commandId": unit["id"],
                    "orderId": world.order_id,
                    "slot": unit["slot_number"],
                    "success": True,
                    "dropDetected": True,
                    "durationMs": 1500,
                }
            )
            await world.send(result)
    elif kind == "advance":
        world.clock.advance(action[1])
        await world.timers()
    elif kind == "refunds":
        gw.refuse = action[1]
        await world.pay_refunds()
        gw.refuse = 0
    elif kind == "echo":
        await world.echo()
    elif kind == "dashboard":
        async with world.ctx.engine.connect() as conn:
            owed = (await ledger.ledger(conn, world.order_id)).owed
        if owed:
            gw.dashboard_refund(owed)
            await world.echo()
    elif kind == "dashboard_all":
        if gw.paid > gw.refunded:
            world.outside = True
            gw.dashboard_refund(gw.paid - gw.refunded)
            await world.echo()
    elif kind == "manual":
        with contextlib.suppress(Conflict):
            await ledger.request_manual_refund(world.ctx, gw, POLICY, world.order_id)
    elif kind in ("release", "cancel_held"):
        async with world.ctx.engine.connect() as conn:
            held = (
                await conn.execute(
                    sa.select(refunds.c.id, refunds.c.dispense_id).where(
                        refunds.c.order_id == world.order_id, refunds.c.status == "HELD"
                    )
                )
            ).all()
        for refund_id, unit_id in held:
            try:
                if kind == "release":
                    world.refunded_anyway.add(unit_id)
                    await ledger.release_held(world.ctx, gw, POLICY, refund_id)
                else:
                    await ledger.cancel_held(world.ctx, refund_id)
            except Conflict:
                pass
    elif kind == "cancel_order":
        with contextlib.suppress(Conflict):
            await order_service.cancel_order(world.ctx, world.order_id)


async def check_always(world: World) -> None:
    """Invariants that hold after every step."""
    async with world.ctx.engine.connect() as conn:
        money = await ledger.ledger(conn, world.order_id)
        stock = (
            await conn.execute(
                sa.select(slots.c.slot_number, slots.c.current_stock, slots.c.reserved).where(
                    slots.c.machine_id == "VM01"
                )
            )
        ).all()
    units = await world.units()
    assert money.refunded <= money.paid, money
    assert money.committed <= money.paid, money
    if not world.late and not world.outside:
        # Nothing is owed back beyond what neither dropped nor may still drop.
        assert money.committed <= max(0, money.paid - money.kept - money.in_play), money
    assert world.gateway.refunded <= world.gateway.paid
    for number, current, reserved in stock:
        dropped = sum(1 for u in units if u["slot_number"] == number and u["status"] == "DROPPED")
        assert STOCK - current == dropped, (number, current, units)
        assert 0 <= reserved <= current


async def quiesce(world: World) -> None:
    """Time passes, the jobs run, an operator pays by hand what the gateway kept refusing."""
    for _ in range(3):
        world.clock.advance(2000)
        await world.timers()
    for _ in range(4):
        world.clock.advance(10_000)
        await world.pay_refunds()
    async with world.ctx.engine.connect() as conn:
        owed = (await ledger.ledger(conn, world.order_id)).owed
    if owed:
        await ledger.request_manual_refund(world.ctx, world.gateway, POLICY, world.order_id)
    await world.echo()


async def check_at_rest(world: World) -> None:
    async with world.ctx.engine.connect() as conn:
        money = await ledger.ledger(conn, world.order_id)
        status = await conn.scalar(sa.select(orders.c.status).where(orders.c.id == world.order_id))
        rows = [dict(r) for r in (await conn.execute(sa.select(refunds))).mappings()]
        late = set(
            (
                await conn.scalars(
                    sa.select(dispense_results.c.dispense_id).where(
                        dispense_results.c.outcome == "LATE"
                    )
                )
            ).all()
        )
        reserved = await conn.scalar(sa.select(sa.func.sum(slots.c.reserved)))
    units = await world.units()
    assert OrderStatus(status) in FINAL_ORDER_STATUSES, status
    assert reserved == 0
    assert money.in_play == 0 and money.owed == 0, money
    assert all(r["status"] != "PENDING" for r in rows), rows
    # Every rupiah the gateway moved is in our books, and nothing else.
    assert money.paid == world.gateway.paid
    assert money.refunded == world.gateway.refunded, (money, world.gateway, rows)
    dropped = {u["id"]: u for u in units if u["status"] == "DROPPED"}
    refunded_units = {r["dispense_id"] for r in rows if r["status"] == "SUCCEEDED"}
    # Never vended and refunded for one unit, except a unit the machine reported dropped only
    # after we had given up (its refund already paid, or released by an operator).
    assert (set(dropped) & refunded_units) <= world.refunded_anyway <= late
    late_value = sum(u["unit_price"] for uid, u in dropped.items() if uid in late)
    charged = money.paid - money.refunded
    if world.outside:
        assert 0 <= charged <= money.kept  # the customer never pays for what did not drop
    elif not late:
        assert charged == money.kept
    else:
        assert money.kept - late_value <= charged <= money.kept


async def scenario(url: str, lines: list[tuple[int, int]], policy: str, actions: list[Any]) -> None:
    clock = FakeClock()
    engine = create_engine(url)
    try:
        await _wipe(engine)
        ctx = ServiceContext(
            engine=engine,
            tunables=Tunables(late_payment_policy=policy),
            clock=clock,
            mqtt_connected=lambda: True,
        )
        await quick_shop(ctx, stock=STOCK)
        async with engine.begin() as conn:  # slot 3 is given away (price 0)
            await conn.execute(
                sa.update(slots).where(slots.c.slot_number == 3).values(price_override=0)
            )
        gateway = FakeGateway()
        order_id = await checkout(
            ctx,
            sandbox(),
            "VM01",
            [OrderLine(slot_number=s, quantity=q) for s, q in lines],
            customer_phone=None,
            payment_method=None,
        )
        async with engine.connect() as conn:
            total = await conn.scalar(
                sa.select(orders.c.total_amount).where(orders.c.id == order_id)
            )
        world = World(ctx, clock, gateway, order_id, int(total))
        for action in actions:
            await act(world, action)
            await check_always(world)
        await quiesce(world)
        await check_always(world)
        await check_at_rest(world)
    finally:
        await engine.dispose()


LINES = st.lists(
    st.tuples(st.sampled_from([1, 2, 3]), st.integers(min_value=1, max_value=2)),
    min_size=1,
    max_size=2,
    unique_by=lambda line: line[0],
)


@pytest.mark.parametrize(
    ("backend", "examples"), [("sqlite", 30), ("postgresql", 10)], ids=["sqlite", "postgresql"]
)
def test_the_books_balance_whatever_happens_to_an_order(
    database_urls: dict[str, str], backend: str, examples: int
) -> None:
    url = database_urls[backend]

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )
    # The audit's scenarios always run; Hypothesis explores around them.
    @example([(1, 1)], "refund", True, [("advance", 200), ("late_drop",)])
    @example([(1, 1)], "refund", True, [("advance", 200), ("refunds", 0), ("late_drop",)])
    @example([(1, 2)], "refund", True, [("result", False, True), ("dashboard",), RESULT_JAM])
    @example(
        [(1, 1)],
        "dispense",
        False,
        [("advance", 1000), ("capture", "t1", "accept"), ("refunds", 0), ("settle", "t1")],
    )
    @example([(1, 1)], "refund", True, [("settle", "t2"), ("result", True, True)])
    @example([(1, 1)], "refund", True, [("dashboard_all",), RESULT_JAM])
    @example([(1, 1)], "refund", True, [RESULT_JAM, ("refunds", 2), ("advance", 30)] * 2)
    @example([(3, 1), (1, 1)], "refund", True, [RESULT_JAM, ("repeat",), ("result", True, False)])
    @example(
        [(1, 1)], "refund", False, [("capture", "t1", "challenge"), ("capture", "t1", "accept")]
    )
    @given(
        lines=LINES,
        policy=st.sampled_from(["refund", "dispense"]),
        paid_first=st.booleans(),
        actions=st.lists(ACTIONS, max_size=25),
    )
    def run(
        lines: list[tuple[int, int]], policy: str, paid_first: bool, actions: list[Any]
    ) -> None:
        # Half the orders are paid before anything else happens, so their units get far.
        opening = [("settle", "t1")] if paid_first else []
        asyncio.run(scenario(url, lines, policy, opening + actions))

    run()
