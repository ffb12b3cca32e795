"""The money ledger over HTTP: every payment and every refund a row, the books from the rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import FakeClock
from tests.integration.helpers import (
    SERVER_KEY,
    add_user,
    api_client,
    bearer,
    order,
    outbox_rows,
    quick_shop,
    report,
    rows,
    sandbox,
    slot_row,
)
from vendhub.adapters.db.tables import machine_events, refunds, slots
from vendhub.adapters.payments import midtrans_notification
from vendhub.bootstrap import Container
from vendhub.services import commands
from vendhub.services import refunds as refund_service
from vendhub.services.checkout import checkout
from vendhub.services.context import ServiceContext
from vendhub.services.errors import Conflict
from vendhub.services.orders import OrderLine, expire_due_orders
from vendhub.services.views import Window

pytestmark = pytest.mark.integration

COCA_COLA = 8000  # slot 1 of the demo shop


@dataclass
class Shop:
    client: httpx.AsyncClient
    container: Container
    clock: FakeClock
    admin: dict[str, str]
    tech: dict[str, str]

    @property
    def ctx(self) -> ServiceContext:
        return self.container.ctx

    async def order(self, **body: Any) -> str:
        created = await self.client.post("/api/orders", json={"slot_number": 1, **body})
        assert created.status_code == 201, created.text
        return str(created.json()["order_id"])

    async def notify(
        self,
        order_id: str,
        status: str,
        *,
        tx: str | None = None,
        amount: int = COCA_COLA,
        **changes: Any,
    ) -> str:
        body = midtrans_notification.build(
            order_id, amount, status, SERVER_KEY, transaction_id=tx or f"tx-{order_id}"
        )
        body.update(changes)
        response = await self.client.post("/api/payments/webhook", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["outcome"])

    async def view(self, order_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/orders/{order_id}", headers=self.admin)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def pay_refunds(self) -> int:
        c = self.container
        return await refund_service.execute_due_refunds(c.ctx, c.payments, c.payment_policy)

    async def finance(self) -> dict[str, Any]:
        response = await self.client.get("/api/finance/summary", headers=self.admin)
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture
async def shop(
    engine: Any, backend: str, database_urls: dict[str, str], clock: FakeClock
) -> AsyncIterator[Shop]:
    async with api_client(database_urls[backend]) as (client, container):
        admin_id = await add_user(container.ctx, "boss", "admin123", "SUPER_ADMIN")
        tech_id = await add_user(container.ctx, "tech", "tech-pass-123", "TECHNICIAN")
        # Tokens are checked against the real time, so they are issued before the fake clock.
        admin = bearer(container, admin_id, "SUPER_ADMIN", "boss")
        tech = bearer(container, tech_id, "TECHNICIAN", "tech")
        container.ctx.clock = clock
        container.ctx.mqtt_connected = lambda: True  # commands go to the outbox
        await quick_shop(container.ctx, stock=5)
        yield Shop(client, container, clock, admin, tech)


async def last_command(ctx: ServiceContext) -> dict[str, Any]:
    return dict((await outbox_rows(ctx, "dispense"))[-1]["body"])


async def set_stock(ctx: ServiceContext, slot: int, stock: int) -> None:
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(slots)
            .where(slots.c.machine_id == "VM01", slots.c.slot_number == slot)
            .values(current_stock=stock)
        )


# --- row 1: a late capture refunded, then its settlement -----------------------------------


async def test_settlement_of_a_late_capture_already_refunded_is_not_vended_as_well(
    shop: Shop,
) -> None:
    from dataclasses import replace

    shop.ctx.tunables = replace(shop.ctx.tunables, late_payment_policy="dispense")
    await set_stock(shop.ctx, 1, 1)
    late = await shop.order()
    shop.clock.advance(shop.ctx.tunables.order_ttl_s + 1)
    assert await expire_due_orders(shop.ctx) == [late]
    other = await shop.order()  # someone else holds the last unit
    assert await shop.notify(late, "capture", fraud_status="accept") == "late_payment"
    assert await shop.pay_refunds() == 1
    # The stock comes back, then the same transaction's settlement arrives.
    cancel = await shop.client.post(f"/api/payments/cancel/{other}", headers=shop.admin)
    assert cancel.status_code == 200
    assert (await slot_row(shop.ctx, 1))["reserved"] == 0
    assert await shop.notify(late, "settlement") == "already_paid"
    view = await shop.view(late)
    assert view["status"] == "EXPIRED" and view["dispenses"] == []
    assert await outbox_rows(shop.ctx, "dispense") == []
    assert (view["paid_amount"], view["refunded_amount"], view["refund_owed"]) == (
        COCA_COLA,
        COCA_COLA,
        0,
    )
    assert (await slot_row(shop.ctx, 1))["reserved"] == 0


# --- row 3: a challenged capture approved later --------------------------------------------


async def test_capture_accepted_after_a_fraud_challenge_pays_the_order(shop: Shop) -> None:
    order_id = await shop.order()
    assert await shop.notify(order_id, "capture", fraud_status="challenge") == "pending"
    assert (await shop.view(order_id))["status"] == "PENDING"
    assert await shop.notify(order_id, "capture", fraud_status="accept") == "paid"
    assert (await shop.view(order_id))["status"] == "DISPENSING"
    assert len(await outbox_rows(shop.ctx, "dispense")) == 1
    # The settlement of the same card transaction is the same money.
    assert await shop.notify(order_id, "settlement") == "already_paid"
    assert (await shop.view(order_id))["paid_amount"] == COCA_COLA


# --- row 4: more than one transaction for one order ----------------------------------------


async def test_a_second_transaction_for_a_paid_order_is_in_the_books_and_owed_back(
    shop: Shop,
) -> None:
    order_id = await shop.order()
    assert await shop.notify(order_id, "settlement", tx="tx-1") == "paid"
    assert await shop.notify(order_id, "settlement", tx="tx-2") == "extra_payment"
    assert await shop.notify(order_id, "settlement", tx="tx-2") == "duplicate"
    view = await shop.view(order_id)
    assert (view["paid_amount"], view["refund_owed"]) == (2 * COCA_COLA, COCA_COLA)
    [extra] = view["refunds"]
    assert (extra["reason"], extra["amount"], extra["status"]) == (
        "EXTRA_PAYMENT",
        COCA_COLA,
        "PENDING",
    )
    await report(shop.ctx, await last_command(shop.ctx), dropped=True)
    assert await shop.pay_refunds() == 1
    view = await shop.view(order_id)
    assert view["status"] == "COMPLETED"
    assert (view["paid_amount"], view["refunded_amount"], view["refund_owed"]) == (
        2 * COCA_COLA,
        COCA_COLA,
        0,
    )
    books = await shop.finance()
    assert (books["gross_paid"], books["refunded"], books["net"]) == (
        2 * COCA_COLA,
        COCA_COLA,
        COCA_COLA,
    )


async def test_two_late_transactions_are_both_refunded(shop: Shop) -> None:
    order_id = await shop.order()
    shop.clock.advance(shop.ctx.tunables.order_ttl_s + 1)
    assert await expire_due_orders(shop.ctx) == [order_id]
    assert await shop.notify(order_id, "settlement", tx="tx-1") == "late_payment"
    assert await shop.notify(order_id, "settlement", tx="tx-2") == "late_payment"
    assert await shop.pay_refunds() == 2
    view = await shop.view(order_id)
    assert sorted(r["refund_key"] for r in view["refunds"]) == [
        f"late-{order_id}",
        f"late-{order_id}-2",
    ]
    assert (view["paid_amount"], view["refunded_amount"], view["refund_owed"]) == (
        2 * COCA_COLA,
        2 * COCA_COLA,
        0,
    )


# --- row 5: a refund made in the Midtrans dashboard ----------------------------------------


def dashboard_refund(amount: int, chargeback_id: int = 71) -> list[dict[str, Any]]:
    # Refunds made by hand at Midtrans carry no refund_key of ours.
    return [
        {
            "refund_chargeback_id": chargeback_id,
            "refund_amount": f"{amount}.00",
            "reason": "refunded from the dashboard",
        }
    ]


async def test_a_dashboard_refund_is_booked_and_a_later_failed_unit_is_not_refunded_again(
    shop: Shop,
) -> None:
    order_id = await shop.order()
    assert await shop.notify(order_id, "settlement") == "paid"
    listed = dashboard_refund(COCA_COLA)
    body = {"refunds": listed, "refund_amount": f"{COCA_COLA}.00"}
    assert await shop.notify(order_id, "refund", **body) == "refund_confirmed"
    assert await shop.notify(order_id, "refund", **body) == "duplicate"
    view = await shop.view(order_id)
    assert view["refunded_amount"] == COCA_COLA
    [booked] = view["refunds"]
    assert (booked["reason"], booked["status"], booked["amount"]) == (
        "GATEWAY_REFUND",
        "SUCCEEDED",
        COCA_COLA,
    )
    # The vend fails afterwards: the customer already has the money back.
    await report(shop.ctx, await last_command(shop.ctx), dropped=False, error="JAM")
    view = await shop.view(order_id)
    assert len(view["refunds"]) == 1 and view["refund_owed"] == 0
    assert await shop.pay_refunds() == 0
    books = await shop.finance()
    assert (books["gross_paid"], books["refunded"], books["refund_pending"]) == (
        COCA_COLA,
        COCA_COLA,
        0,
    )


async def test_a_partial_dashboard_refund_leaves_only_the_rest_owed(shop: Shop) -> None:
    order_id = await shop.order()
    assert await shop.notify(order_id, "settlement") == "paid"
    body = {"refunds": dashboard_refund(3000), "refund_amount": "3000.00"}
    assert await shop.notify(order_id, "partial_refund", **body) == "refund_confirmed"
    await report(shop.ctx, await last_command(shop.ctx), dropped=False, error="JAM")
    view = await shop.view(order_id)
    [owed] = [r for r in view["refunds"] if r["reason"] == "JAM"]
    assert (owed["amount"], view["refund_owed"]) == (COCA_COLA - 3000, COCA_COLA - 3000)
    assert await shop.pay_refunds() == 1
    view = await shop.view(order_id)
    assert (view["status"], view["refunded_amount"], view["refund_owed"]) == (
        "REFUNDED",
        COCA_COLA,
        0,
    )


async def test_a_dashboard_refund_covers_a_refund_we_had_not_tried_yet(shop: Shop) -> None:
    order_id = await shop.order()
    assert await shop.notify(order_id, "settlement") == "paid"
    await report(shop.ctx, await last_command(shop.ctx), dropped=False, error="JAM")
    body = {"refunds": dashboard_refund(COCA_COLA), "refund_amount": f"{COCA_COLA}.00"}
    assert await shop.notify(order_id, "refund", **body) == "refund_confirmed"
    statuses = sorted((r["reason"], r["status"]) for r in (await shop.view(order_id))["refunds"])
    assert statuses == [("GATEWAY_REFUND", "SUCCEEDED"), ("JAM", "CANCELLED")]
    assert await shop.pay_refunds() == 0
    view = await shop.view(order_id)
    assert (view["status"], view["refunded_amount"], view["refund_owed"]) == (
        "REFUNDED",
        COCA_COLA,
        0,
    )


# --- a late "dropped" result: the refund is held, an operator decides -----------------------


async def held_refund(shop: Shop) -> tuple[str, dict[str, Any]]:
    order_id = await shop.order()
    assert await shop.notify(order_id, "settlement") == "paid"
    command = await last_command(shop.ctx)
    shop.clock.advance(shop.ctx.tunables.command_ttl_s + 10)
    assert await commands.give_up_due(shop.ctx) == 1
    assert await report(shop.ctx, command, dropped=True) == "LATE"
    [refund] = (await shop.view(order_id))["refunds"]
    assert refund["status"] == "HELD"
    return order_id, refund


async def test_an_operator_cancels_a_refund_held_after_a_late_drop(shop: Shop) -> None:
    order_id, refund = await held_refund(shop)
    url = f"/api/refunds/{refund['id']}/cancel"
    assert (await shop.client.post(url)).status_code == 401
    assert (await shop.client.post(url, headers=shop.tech)).status_code == 403
    held = await shop.client.get("/api/refunds", params={"status": "HELD"}, headers=shop.tech)
    assert [r["id"] for r in held.json()["data"]] == [refund["id"]]
    response = await shop.client.post(url, headers=shop.admin)
    assert response.status_code == 200, response.text
    assert response.json()["refund"]["status"] == "CANCELLED"
    assert (await shop.client.post(url, headers=shop.admin)).status_code == 409
    assert await shop.pay_refunds() == 0
    view = await shop.view(order_id)
    assert (view["status"], view["refunded_amount"], view["refund_held"]) == ("COMPLETED", 0, 0)
    assert (await slot_row(shop.ctx, 1))["current_stock"] == 4
    # The give-up left its (warning) VEND_FAILED alert; the late drop raises one critical.
    [alert] = await rows(shop.ctx, machine_events, machine_events.c.severity == "critical")
    assert alert["details"]["refund_id"] == refund["id"]


async def test_an_operator_releases_a_refund_held_after_a_late_drop(shop: Shop) -> None:
    order_id, refund = await held_refund(shop)
    assert (await shop.view(order_id))["refund_held"] == COCA_COLA
    url = f"/api/refunds/{refund['id']}/release"
    assert (await shop.client.post(url, headers=shop.tech)).status_code == 403
    response = await shop.client.post(url, headers=shop.admin)
    assert response.status_code == 200, response.text
    assert response.json()["refund"]["status"] == "SUCCEEDED"
    assert (await shop.client.post(url, headers=shop.admin)).status_code == 409
    view = await shop.view(order_id)
    assert (view["refunded_amount"], view["refund_held"]) == (COCA_COLA, 0)
    missing = await shop.client.post("/api/refunds/nope/release", headers=shop.admin)
    assert missing.status_code == 404


async def test_a_late_drop_after_the_refund_was_paid_is_alerted_and_moves_stock(
    shop: Shop,
) -> None:
    order_id = await shop.order()
    assert await shop.notify(order_id, "settlement") == "paid"
    command = await last_command(shop.ctx)
    shop.clock.advance(shop.ctx.tunables.command_ttl_s + 10)
    assert await commands.give_up_due(shop.ctx) == 1
    assert await shop.pay_refunds() == 1
    assert await report(shop.ctx, command, dropped=True) == "LATE"
    [refund] = await rows(shop.ctx, refunds)
    assert refund["status"] == "SUCCEEDED"
    # The give-up left its (warning) VEND_FAILED alert; the late drop raises one critical.
    [alert] = await rows(shop.ctx, machine_events, machine_events.c.severity == "critical")
    assert alert["severity"] == "critical" and "already paid" in alert["message"]
    assert (await slot_row(shop.ctx, 1))["current_stock"] == 4


@pytest.mark.parametrize(("back", "left"), [(3000, 5000), (COCA_COLA, 0)], ids=["part", "all"])
async def test_a_held_refund_is_not_released_beyond_what_is_left_of_the_payment(
    shop: Shop, back: int, left: int
) -> None:
    order_id, refund = await held_refund(shop)
    # Meanwhile part or all of the payment went back from the Midtrans dashboard.
    body = {"refunds": dashboard_refund(back), "refund_amount": f"{back}.00"}
    status = "partial_refund" if back < COCA_COLA else "refund"
    assert await shop.notify(order_id, status, **body) == "refund_confirmed"
    response = await shop.client.post(f"/api/refunds/{refund['id']}/release", headers=shop.admin)
    # Releasing 8000 more would pay out more than was paid.
    assert response.status_code == 409
    assert response.json() == {
        "error": "conflict",
        "message": f"refund {refund['id']}: only Rp {left} left of what was paid",
    }
    view = await shop.view(order_id)
    assert (view["refund_held"], view["refunded_amount"]) == (COCA_COLA, back)
    assert await shop.pay_refunds() == 0


async def test_releasing_or_cancelling_one_held_refund_leaves_the_others_held(
    shop: Shop,
) -> None:
    held = [await held_refund(shop) for _ in range(3)]
    (_, first), (_, second), _ = held
    response = await shop.client.post(f"/api/refunds/{first['id']}/release", headers=shop.admin)
    assert response.json()["refund"]["status"] == "SUCCEEDED"
    response = await shop.client.post(f"/api/refunds/{second['id']}/cancel", headers=shop.admin)
    assert response.json()["refund"]["status"] == "CANCELLED"
    statuses = [(await shop.view(order_id))["refunds"][0]["status"] for order_id, _ in held]
    assert statuses == ["SUCCEEDED", "CANCELLED", "HELD"]
    assert await shop.pay_refunds() == 0


# --- an operator's "retry now" of a refund the gateway kept refusing ------------------------


async def failed_refund(shop: Shop) -> tuple[str, str]:
    order_id = await shop.order()
    assert await shop.notify(order_id, "settlement") == "paid"
    await report(shop.ctx, await last_command(shop.ctx), dropped=False, error="JAM")
    [refund] = (await shop.view(order_id))["refunds"]
    # As if the gateway had refused it REFUND_MAX_ATTEMPTS times.
    async with shop.ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(refunds)
            .where(refunds.c.id == refund["id"])
            .values(status="FAILED", attempts=5, next_attempt_at=None)
        )
    return order_id, refund["id"]


async def test_retry_now_retries_only_its_refund_and_only_what_is_still_owed(
    shop: Shop,
) -> None:
    (first_order, first), (second_order, second) = [await failed_refund(shop) for _ in "12"]
    c = shop.container
    assert await refund_service.retry_now(c.ctx, c.payments, c.payment_policy, first) is True
    statuses = [(await shop.view(o))["refunds"][0]["status"] for o in (first_order, second_order)]
    assert statuses == ["SUCCEEDED", "FAILED"]
    # The second order's money went back from the Midtrans dashboard meanwhile.
    body = {"refunds": dashboard_refund(3000), "refund_amount": "3000.00"}
    assert await shop.notify(second_order, "partial_refund", **body) == "refund_confirmed"
    message = f"refund {second}: only Rp {COCA_COLA - 3000} is still owed on its order"
    with pytest.raises(Conflict) as refused:
        await refund_service.retry_now(c.ctx, c.payments, c.payment_policy, second)
    assert str(refused.value) == message
    view = await shop.view(second_order)
    assert view["refunded_amount"] == 3000
    assert [r["status"] for r in view["refunds"] if r["id"] == second] == ["FAILED"]


# --- the owed and refund lists ---------------------------------------------------------------


async def test_the_owed_list_is_oldest_first_with_its_machine_and_the_refund_list_newest_first(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    await quick_shop(ctx, machine_id="VM02")
    order_of = {"VM01": await order(ctx)}
    order_of["VM02"] = await checkout(
        ctx,
        sandbox(),
        "VM02",
        [OrderLine(slot_number=1, quantity=1)],
        customer_phone=None,
        payment_method=None,
    )
    t0 = clock()
    # (id, machine, status, seconds before t0): written as the ledger would have them.
    ledger_rows = [
        ("R9", "VM01", "FAILED", 10),
        ("R3", "VM02", "PENDING", 0),
        ("R1", "VM01", "PENDING", 0),  # as old as R3: the id decides
        ("R5", "VM02", "SUCCEEDED", 20),
        ("R7", "VM01", "HELD", 5),
    ]
    async with ctx.engine.begin() as conn:
        for refund_id, machine_id, status, ago in ledger_rows:
            at = t0 - timedelta(seconds=ago)
            await conn.execute(
                sa.insert(refunds).values(
                    id=refund_id,
                    order_id=order_of[machine_id],
                    refund_key=f"key-{refund_id}",
                    amount=COCA_COLA,
                    status=status,
                    reason="JAM",
                    created_at=at,
                    updated_at=at,
                )
            )

    def listed(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(r["id"], r["machine_id"]) for r in found]

    assert listed(await refund_service.owed(ctx)) == [
        ("R9", "VM01"),
        ("R1", "VM01"),
        ("R3", "VM02"),
    ]
    assert listed(await refund_service.owed(ctx, limit=2)) == [("R9", "VM01"), ("R1", "VM01")]

    page = await refund_service.list_refunds(ctx, None, Window(limit=3))
    assert ([r["id"] for r in page.items], page.next_offset) == (["R3", "R1", "R7"], 3)
    page = await refund_service.list_refunds(ctx, None, Window(limit=3, offset=3))
    assert ([r["id"] for r in page.items], page.next_offset) == (["R9", "R5"], None)
    page = await refund_service.list_refunds(ctx, "PENDING", Window())
    assert [r["id"] for r in page.items] == ["R3", "R1"]
