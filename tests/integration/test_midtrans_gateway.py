"""The midtrans provider over real HTTP against the local stand-in, on every database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import FakeClock, free_port
from tests.integration.helpers import (
    SERVER_KEY,
    add_user,
    api_settings,
    bearer,
    count,
    order_status,
    outbox_rows,
    quick_shop,
    report,
    rows,
    slot_row,
)
from tests.midtrans_standin import MidtransStandIn, serve
from vendhub.adapters.db.tables import (
    machine_events,
    orders,
    payment_notifications,
    payments,
    refunds,
)
from vendhub.bootstrap import Container, build
from vendhub.entrypoints.api.app import create_app
from vendhub.services import reconcile
from vendhub.services import refunds as refund_service
from vendhub.services.context import PaymentPolicy, ServiceContext
from vendhub.services.orders import expire_due_orders

pytestmark = pytest.mark.integration

COCA_COLA, AQUA = 8000, 5000
POLICY = PaymentPolicy(
    reconcile_after_s=120,
    reconcile_every_s=60,
    refund_max_attempts=3,
    backoff_base_s=10,
    backoff_max_s=60,
)


@dataclass
class Gateway:
    standin: MidtransStandIn
    client: httpx.AsyncClient
    container: Container
    clock: FakeClock
    admin: dict[str, str]
    tech: dict[str, str]

    @property
    def ctx(self) -> ServiceContext:
        return self.container.ctx

    async def order(self, method: str | None = "qris", **body: Any) -> dict[str, Any]:
        payload = {"slot_number": 1, **body}
        if method is not None:
            payload["payment_method"] = method
        created = await self.client.post("/api/orders", json=payload)
        assert created.status_code == 201, created.text
        return dict(created.json())

    async def view(self, order_id: str) -> dict[str, Any]:
        # An operator's view: the refunds are not shown to anonymous readers.
        response = await self.client.get(f"/api/orders/{order_id}", headers=self.admin)
        return dict(response.json())

    async def refund_all(self) -> int:
        return await refund_service.execute_due_refunds(self.ctx, self.container.payments, POLICY)

    async def paid_and_delivered(self, method: str = "qris", **body: Any) -> dict[str, Any]:
        created = await self.order(method, **body)
        self.standin.pay(created["order_id"])
        assert set(await self.standin.deliver()) == {200}
        return created


@pytest.fixture
async def gw(
    engine: AsyncEngine, backend: str, database_urls: dict[str, str], clock: FakeClock
) -> AsyncIterator[Gateway]:
    standin = MidtransStandIn(SERVER_KEY, hang_s=1.0)
    async with serve(standin.app, free_port()) as standin_url:
        standin.url = standin_url
        settings = api_settings(
            database_urls[backend],
            payment_provider="midtrans",
            midtrans_api_base_url=standin_url,
            midtrans_snap_base_url=f"{standin_url}/snap",
            midtrans_timeout_s=0.3,
        )
        container = build(settings)
        admin_id = await add_user(container.ctx, "admin", "admin123", "SUPER_ADMIN")
        tech_id = await add_user(container.ctx, "tech", "tech-pass-123", "TECHNICIAN")
        # Tokens are checked against the real time, so they are issued before the fake clock.
        admin = bearer(container, admin_id, "SUPER_ADMIN", "admin")
        tech = bearer(container, tech_id, "TECHNICIAN", "tech")
        container.ctx.clock = clock
        # Commands go to the outbox as if the broker were up; no MQTT runs here.
        container.ctx.mqtt_connected = lambda: True
        await container.start(workers=False)
        await quick_shop(container.ctx, stock=5)
        try:
            app = create_app(container=container, workers=False)
            async with serve(app, free_port()) as app_url:
                standin.webhook_url = f"{app_url}/api/payments/webhook"
                async with httpx.AsyncClient(base_url=app_url) as client:
                    yield Gateway(standin, client, container, clock, admin, tech)
        finally:
            await container.payments.aclose()  # type: ignore[attr-defined]
            await container.stop()


async def fail_first_unit(gw: Gateway, error: str = "JAM") -> dict[str, Any]:
    command = (await outbox_rows(gw.ctx, "dispense"))[-1]["body"]
    await report(gw.ctx, command, dropped=False, error=error)
    return dict(command)


# --- creating payments ---------------------------------------------------------------------


async def test_qris_order_carries_the_qr_a_kiosk_shows(gw: Gateway) -> None:
    created = await gw.order("qris")
    payment = created["payment"]
    assert payment["provider"] == "midtrans" and payment["status"] == "PENDING"
    assert payment["qr_string"].startswith("000201")
    assert payment["qr_url"].endswith("/qr-code")
    txn = gw.standin.txns[created["order_id"]]
    # The gateway's Jakarta wall time (UTC+7), kept as the same instant in UTC.
    assert txn.expiry_time is not None
    expected = datetime.strptime(txn.expiry_time, "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=timezone(timedelta(hours=7))
    )
    assert datetime.fromisoformat(payment["gateway_expires_at"]) == expected
    assert txn.gross_amount == COCA_COLA and payment["transaction_id"] == txn.transaction_id
    assert gw.standin.posts_without_idempotency_key() == []


async def test_snap_order_carries_token_and_redirect_url(gw: Gateway) -> None:
    created = await gw.order(None)
    payment = created["payment"]
    assert payment["token"] and payment["redirect_url"].startswith(gw.standin.url)
    [(method, path, headers, body)] = gw.standin.requests
    assert (method, path) == ("POST", "/snap/v1/transactions")
    assert headers["idempotency-key"] == f"snap-{created['order_id']}"
    assert body["transaction_details"]["gross_amount"] == COCA_COLA
    assert body["expiry"] == {"unit": "minute", "duration": 15}


async def test_gateway_down_at_checkout_cancels_the_order_and_releases_stock(
    gw: Gateway,
) -> None:
    gw.standin.fail("charge", "500")
    response = await gw.client.post(
        "/api/orders", json={"slot_number": 1, "payment_method": "qris"}
    )
    assert response.status_code == 502 and response.json()["error"] == "payment_gateway_error"
    assert (await slot_row(gw.ctx, 1))["reserved"] == 0


# --- notifications and reconciliation ----------------------------------------------------


async def test_no_webhook_is_reconciled_by_polling_the_status(gw: Gateway) -> None:
    created = await gw.order("qris")
    order_id = created["order_id"]
    gw.standin.pay(order_id)
    gw.standin.drop_notifications()  # the webhook never comes
    gw.clock.advance(60)
    assert await reconcile.reconcile_pending(gw.ctx, gw.container.payments, POLICY) == {}
    gw.clock.advance(61)
    outcomes = await reconcile.reconcile_pending(gw.ctx, gw.container.payments, POLICY)
    assert {k: v.value for k, v in outcomes.items()} == {order_id: "paid"}
    assert await order_status(gw.ctx, order_id) == "DISPENSING"
    assert len(await outbox_rows(gw.ctx, "dispense")) == 1
    [stored] = await rows(gw.ctx, payment_notifications)
    assert (stored["source"], stored["outcome"]) == ("status", "paid")
    # The webhook arriving after all is the same event: nothing happens twice.
    gw.standin.queue(order_id)
    assert await gw.standin.deliver() == [200]
    assert gw.standin.delivered[-1][1] == 200
    assert len(await outbox_rows(gw.ctx, "dispense")) == 1
    assert await count(gw.ctx, payment_notifications) == 1


async def test_still_pending_order_is_asked_again_only_after_the_interval(gw: Gateway) -> None:
    created = await gw.order("qris")
    gw.clock.advance(121)
    provider = gw.container.payments
    assert (await reconcile.reconcile_pending(gw.ctx, provider, POLICY))[
        created["order_id"]
    ].value == "pending"
    assert await reconcile.reconcile_pending(gw.ctx, provider, POLICY) == {}
    gw.clock.advance(61)
    await reconcile.reconcile_pending(gw.ctx, provider, POLICY)
    [payment] = await rows(gw.ctx, payments)
    assert payment["check_count"] == 2
    assert await order_status(gw.ctx, created["order_id"]) == "PENDING"


async def test_duplicate_and_out_of_order_notifications_change_nothing_twice(
    gw: Gateway,
) -> None:
    created = await gw.order("qris")
    order_id = created["order_id"]
    gw.standin.queue(order_id, "pending")
    gw.standin.pay(order_id)
    # Settlement first, then the stale pending; each delivered twice.
    assert await gw.standin.deliver(reverse=True, twice=True) == [200] * 4
    assert await order_status(gw.ctx, order_id) == "DISPENSING"
    assert len(await outbox_rows(gw.ctx, "dispense")) == 1
    stored = await rows(gw.ctx, payment_notifications)
    assert sorted(s["transaction_status"] for s in stored) == ["pending", "settlement"]
    [payment] = await rows(gw.ctx, payments)
    assert payment["status"] == "PAID"


# --- expiry --------------------------------------------------------------------------------


async def test_expired_order_releases_stock_and_is_expired_at_the_gateway(gw: Gateway) -> None:
    created = await gw.order("qris")
    order_id = created["order_id"]
    gw.clock.advance(15 * 60 + 1)
    assert await expire_due_orders(gw.ctx) == [order_id]
    assert (await slot_row(gw.ctx, 1))["reserved"] == 0
    gw.standin.fail("expire", "500")
    provider = gw.container.payments
    assert await reconcile.close_at_gateway_due(gw.ctx, provider, POLICY) == 0
    [payment] = await rows(gw.ctx, payments)
    assert payment["gateway_closed_at"] is None and "500" in payment["close_error"]
    assert await reconcile.close_at_gateway_due(gw.ctx, provider, POLICY) == 0  # backing off
    gw.clock.advance(POLICY.backoff(1))
    assert await reconcile.close_at_gateway_due(gw.ctx, provider, POLICY) == 1
    assert gw.standin.txns[order_id].status == "expire"
    [payment] = await rows(gw.ctx, payments)
    assert payment["gateway_closed_at"] is not None and payment["close_attempts"] == 2
    assert await reconcile.close_at_gateway_due(gw.ctx, provider, POLICY) == 0
    # Midtrans' own expire notification changes nothing more.
    assert await gw.standin.deliver() == [200]
    assert await order_status(gw.ctx, order_id) == "EXPIRED"


async def test_cancelled_order_is_cancelled_at_the_gateway(gw: Gateway) -> None:
    created = await gw.order("qris")
    response = await gw.client.post(
        f"/api/payments/cancel/{created['order_id']}",
        headers={"X-Order-Token": created["access_token"]},
    )
    assert response.json()["status"] == "CANCELLED"
    [payment] = await rows(gw.ctx, payments)
    assert payment["gateway_closed_at"] is not None
    assert gw.standin.txns[created["order_id"]].status == "cancel"


async def test_unopened_snap_order_expires_without_a_gateway_transaction(gw: Gateway) -> None:
    await gw.order(None)
    gw.clock.advance(15 * 60 + 1)
    await expire_due_orders(gw.ctx)
    assert await reconcile.close_at_gateway_due(gw.ctx, gw.container.payments, POLICY) == 1


async def test_payment_after_local_expiry_is_recorded_and_refunded(gw: Gateway) -> None:
    created = await gw.order("qris")
    order_id = created["order_id"]
    gw.clock.advance(15 * 60 + 1)
    await expire_due_orders(gw.ctx)
    gw.standin.pay(order_id, notify=False)  # paid just before our expire reached Midtrans
    provider = gw.container.payments
    assert await reconcile.close_at_gateway_due(gw.ctx, provider, POLICY) == 1
    [refund] = await rows(gw.ctx, refunds)
    assert (refund["refund_key"], refund["amount"]) == (f"late-{order_id}", COCA_COLA)
    assert await gw.refund_all() == 1
    assert gw.standin.refund_effects == [(order_id, f"late-{order_id}", COCA_COLA)]
    view = await gw.view(order_id)
    assert (view["status"], view["refunded_amount"]) == ("EXPIRED", COCA_COLA)
    assert view["refunds"][0]["status"] == "SUCCEEDED" and not view["refund_pending"]
    assert await outbox_rows(gw.ctx, "dispense") == []


# --- refunds -------------------------------------------------------------------------------


async def test_failed_vend_is_refunded_exactly_once_when_the_refund_call_times_out(
    gw: Gateway,
) -> None:
    created = await gw.paid_and_delivered()
    order_id = created["order_id"]
    await fail_first_unit(gw)
    gw.standin.fail("refund", "timeout_after_effect")
    assert await gw.refund_all() == 0
    [refund] = await rows(gw.ctx, refunds)
    assert (refund["status"], refund["attempts"]) == ("PENDING", 1)
    assert "Timeout" in refund["last_error"]
    view = await gw.view(order_id)
    assert view["status"] == "FAILED" and view["refund_pending"]
    assert await gw.refund_all() == 0  # not due yet
    gw.clock.advance(POLICY.backoff(1))
    assert await gw.refund_all() == 1
    assert await gw.refund_all() == 0
    assert gw.standin.refund_effects == [(order_id, refund["refund_key"], COCA_COLA)]
    view = await gw.view(order_id)
    assert (view["status"], view["refunded_amount"]) == ("REFUNDED", COCA_COLA)
    assert view["refunds"][0]["status"] == "SUCCEEDED" and not view["refund_pending"]
    # Midtrans' refund notification confirms what is already booked.
    assert await gw.standin.deliver() == [200]
    assert (await gw.view(order_id))["refunded_amount"] == COCA_COLA


async def test_partial_refunds_of_a_multi_unit_order_are_exact(gw: Gateway) -> None:
    body = {"items": [{"slot_number": 1, "quantity": 2}, {"slot_number": 2, "quantity": 1}]}
    created = await gw.client.post("/api/orders/multi", json={**body, "payment_method": "qris"})
    order_id = created.json()["order_id"]
    gw.standin.pay(order_id)
    await gw.standin.deliver()
    outcomes = [True, False, False]  # Coca Cola drops; one Coca Cola and the Aqua fail
    for dropped in outcomes:
        command = (await outbox_rows(gw.ctx, "dispense"))[-1]["body"]
        await report(gw.ctx, command, dropped=dropped, error=None if dropped else "JAM")
    assert await gw.refund_all() == 2
    assert sorted(a for _, _, a in gw.standin.refund_effects) == [AQUA, COCA_COLA]
    assert gw.standin.txns[order_id].status == "partial_refund"
    view = await gw.view(order_id)
    assert (view["status"], view["refunded_amount"]) == ("FAILED", AQUA + COCA_COLA)
    # Both partial_refund notifications are kept: they are different events.
    assert await gw.standin.deliver() == [200, 200]
    stored = await rows(gw.ctx, payment_notifications)
    assert [s["transaction_status"] for s in stored].count("partial_refund") == 2
    assert (await gw.view(order_id))["refunded_amount"] == AQUA + COCA_COLA


async def test_rejected_refund_is_retried_a_bounded_number_of_times_then_alerts(
    gw: Gateway,
) -> None:
    created = await gw.paid_and_delivered()
    await fail_first_unit(gw)
    gw.standin.fail("refund", "412", "412", "412")
    for _ in range(POLICY.refund_max_attempts):
        assert await gw.refund_all() == 0
        gw.clock.advance(POLICY.backoff_max_s)
    [refund] = await rows(gw.ctx, refunds)
    assert (refund["status"], refund["attempts"]) == ("FAILED", 3)
    assert "412" in refund["last_error"]
    [alert] = await rows(gw.ctx, machine_events, machine_events.c.event_type == "REFUND_FAILED")
    assert alert["severity"] == "critical" and created["order_id"] in alert["message"]
    view = await gw.view(created["order_id"])
    assert view["refund_pending"] and view["refunds"][0]["last_error"]
    assert gw.standin.refund_effects == []


async def test_manual_refund_is_idempotent_and_admin_only(gw: Gateway) -> None:
    created = await gw.paid_and_delivered()
    order_id = created["order_id"]
    await fail_first_unit(gw)
    gw.standin.fail("refund", "412", "412", "412")
    for _ in range(3):  # the automatic refund is refused until it gives up
        await gw.refund_all()
        gw.clock.advance(60)
    url = f"/api/orders/{order_id}/refund"
    assert (await gw.client.post(url)).status_code == 401
    assert (await gw.client.post(url, headers=gw.tech)).status_code == 403
    first, second = await asyncio.gather(
        gw.client.post(url, headers=gw.admin), gw.client.post(url, headers=gw.admin)
    )
    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["refund"]["id"] == second.json()["refund"]["id"]
    third = (await gw.client.post(url, headers=gw.admin)).json()["refund"]
    assert third["id"] == first.json()["refund"]["id"] and third["status"] == "SUCCEEDED"
    assert gw.standin.refund_effects == [(order_id, f"manual-{order_id}", COCA_COLA)]
    assert await count(gw.ctx, refunds) == 2
    view = await gw.view(order_id)
    assert (view["status"], view["refunded_amount"]) == ("REFUNDED", COCA_COLA)


async def test_manual_refund_of_a_completed_order_is_refused(gw: Gateway) -> None:
    created = await gw.paid_and_delivered()
    command = (await outbox_rows(gw.ctx, "dispense"))[-1]["body"]
    await report(gw.ctx, command, dropped=True)
    response = await gw.client.post(f"/api/orders/{created['order_id']}/refund", headers=gw.admin)
    assert response.status_code == 409
    assert await count(gw.ctx, refunds) == 0


# --- finance -------------------------------------------------------------------------------


async def test_finance_summary_numbers_are_exact(gw: Gateway) -> None:
    start = gw.clock.now
    done = await gw.paid_and_delivered()  # Coca Cola, drops
    await report(gw.ctx, (await outbox_rows(gw.ctx, "dispense"))[-1]["body"], dropped=True)
    failed = await gw.paid_and_delivered(slot_number=2)  # Aqua, jams, refunded
    await fail_first_unit(gw)
    await gw.refund_all()
    pending = await gw.paid_and_delivered(slot_number=3)  # Indomie, jams, refund still owed
    await fail_first_unit(gw)
    await gw.order("qris", slot_number=4)  # never paid
    gw.clock.advance(1)
    end = gw.clock.now
    query = {"from": start.isoformat(), "to": end.isoformat()}
    response = await gw.client.get("/api/finance/summary", params=query, headers=gw.admin)
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["orders_paid"] == 3
    assert got["gross_paid"] == COCA_COLA + AQUA + 4500
    assert got["refunded"] == AQUA and got["refund_pending"] == 4500
    assert got["net"] == COCA_COLA + 4500
    assert (got["units_dropped"], got["units_failed"]) == (1, 2)
    assert got["failed_vend_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert [(p["product_name"], p["units_sold"], p["revenue"]) for p in got["products"]] == [
        ("Coca Cola 330ml", 1, COCA_COLA)
    ]
    other = await gw.client.get(
        "/api/finance/summary", params={**query, "machine_id": "VM99"}, headers=gw.admin
    )
    assert other.json()["gross_paid"] == 0 and other.json()["failed_vend_rate"] == 0.0
    later = await gw.client.get(
        "/api/finance/summary", params={"from": end.isoformat()}, headers=gw.admin
    )
    assert later.json()["orders_paid"] == 0
    assert (await gw.client.get("/api/finance/summary")).status_code == 401
    assert {done["order_id"], failed["order_id"], pending["order_id"]} <= {
        r["id"] for r in await rows(gw.ctx, orders)
    }


# --- the ledger after refusals -------------------------------------------------------------


async def refused_until_failed(gw: Gateway) -> str:
    created = await gw.paid_and_delivered()
    await fail_first_unit(gw)
    gw.standin.fail("refund", "412", "412", "412")
    for _ in range(POLICY.refund_max_attempts):
        await gw.refund_all()
        gw.clock.advance(POLICY.backoff_max_s)
    [refund] = await rows(gw.ctx, refunds)
    assert refund["status"] == "FAILED"
    return str(created["order_id"])


async def test_a_failed_refund_paid_by_a_manual_retry_is_no_longer_owed(gw: Gateway) -> None:
    order_id = await refused_until_failed(gw)
    view = await gw.view(order_id)
    assert view["refund_pending"] and view["refund_owed"] == COCA_COLA
    books = await gw.client.get("/api/finance/summary", headers=gw.admin)
    assert books.json()["refund_pending"] == COCA_COLA
    response = await gw.client.post(f"/api/orders/{order_id}/refund", headers=gw.admin)
    assert response.json()["refund"]["status"] == "SUCCEEDED"
    view = await gw.view(order_id)
    assert not view["refund_pending"] and view["refund_owed"] == 0
    assert (view["status"], view["refunded_amount"]) == ("REFUNDED", COCA_COLA)
    books = (await gw.client.get("/api/finance/summary", headers=gw.admin)).json()
    assert (books["refunded"], books["refund_pending"], books["net"]) == (COCA_COLA, 0, 0)


async def test_a_refused_manual_refund_can_be_retried_under_a_new_key(gw: Gateway) -> None:
    order_id = await refused_until_failed(gw)
    url = f"/api/orders/{order_id}/refund"
    gw.standin.fail("refund", "412")
    refused = (await gw.client.post(url, headers=gw.admin)).json()
    assert refused["success"] is True and refused["refund"]["status"] == "PENDING"
    # Refused until it gives up, like any refund.
    gw.standin.fail("refund", "412", "412")
    for _ in range(2):
        gw.clock.advance(POLICY.backoff_max_s)
        await gw.refund_all()
    [manual] = await rows(gw.ctx, refunds, refunds.c.reason == "MANUAL")
    assert (manual["refund_key"], manual["status"]) == (f"manual-{order_id}", "FAILED")
    retried = (await gw.client.post(url, headers=gw.admin)).json()
    assert retried["refund"]["refund_key"] == f"manual-{order_id}-2"
    assert retried["refund"]["status"] == "SUCCEEDED"
    again = (await gw.client.post(url, headers=gw.admin)).json()
    assert again["refund"]["id"] == retried["refund"]["id"]
    assert gw.standin.refund_effects == [(order_id, f"manual-{order_id}-2", COCA_COLA)]
    view = await gw.view(order_id)
    assert (view["refunded_amount"], view["refund_owed"]) == (COCA_COLA, 0)


# --- reconciliation's error branches ----------------------------------------------------


async def test_a_status_query_the_gateway_fails_is_asked_again_after_the_interval(
    gw: Gateway,
) -> None:
    created = await gw.order("qris")
    order_id = created["order_id"]
    gw.standin.pay(order_id, notify=False)
    gw.standin.fail("status", "500")
    gw.clock.advance(121)
    provider = gw.container.payments
    assert await reconcile.reconcile_pending(gw.ctx, provider, POLICY) == {}
    assert await order_status(gw.ctx, order_id) == "PENDING"
    [payment] = await rows(gw.ctx, payments)
    assert (payment["check_count"], payment["checked_at"]) == (1, gw.clock())
    assert await reconcile.reconcile_pending(gw.ctx, provider, POLICY) == {}  # not yet
    gw.clock.advance(POLICY.reconcile_every_s)
    outcomes = await reconcile.reconcile_pending(gw.ctx, provider, POLICY)
    assert {k: v.value for k, v in outcomes.items()} == {order_id: "paid"}
    assert await order_status(gw.ctx, order_id) == "DISPENSING"


async def test_a_status_answer_with_the_wrong_amount_is_not_applied_and_is_asked_again(
    gw: Gateway,
) -> None:
    created = await gw.order("qris")
    order_id = created["order_id"]
    gw.standin.pay(order_id, notify=False)
    gw.standin.txns[order_id].gross_amount = COCA_COLA - 1  # signed, but not our price
    gw.clock.advance(121)
    provider = gw.container.payments
    assert await reconcile.reconcile_pending(gw.ctx, provider, POLICY) == {}
    assert await order_status(gw.ctx, order_id) == "PENDING"
    assert await count(gw.ctx, payment_notifications) == 0
    assert await outbox_rows(gw.ctx, "dispense") == []
    gw.clock.advance(POLICY.reconcile_every_s)
    assert await reconcile.reconcile_pending(gw.ctx, provider, POLICY) == {}
    [payment] = await rows(gw.ctx, payments)
    assert payment["check_count"] == 2


async def test_a_refused_close_whose_status_is_unknown_is_retried_with_backoff(
    gw: Gateway,
) -> None:
    created = await gw.order("qris")
    order_id = created["order_id"]
    gw.clock.advance(15 * 60 + 1)
    assert await expire_due_orders(gw.ctx) == [order_id]
    # Refused (not retryable as such), and the status query cannot say what happened.
    gw.standin.fail("expire", "412")
    gw.standin.fail("status", "500")
    provider = gw.container.payments
    assert await reconcile.close_at_gateway_due(gw.ctx, provider, POLICY) == 0
    [payment] = await rows(gw.ctx, payments)
    assert payment["gateway_closed_at"] is None and "412" in payment["close_error"]
    assert payment["close_next_at"] == gw.clock() + timedelta(seconds=POLICY.backoff(1))
    assert await reconcile.close_at_gateway_due(gw.ctx, provider, POLICY) == 0
    gw.clock.advance(POLICY.backoff(1))
    assert await reconcile.close_at_gateway_due(gw.ctx, provider, POLICY) == 1
    assert gw.standin.txns[order_id].status == "expire"
    assert await refund_service.execute_due_refunds(gw.ctx, provider, POLICY) == 0
