"""Payment notifications on every database: verified, applied once, in order, or refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.helpers import (
    SERVER_KEY,
    api_client,
    assert_error,
    count,
    order,
    order_status,
    outbox_rows,
    pay,
    quick_shop,
    rows,
    sandbox,
    slot_row,
)
from vendhub.adapters.db.tables import payment_notifications, payments, refunds, stock_logs
from vendhub.adapters.payments import midtrans_notification
from vendhub.services import payments as payment_service
from vendhub.services.context import ServiceContext
from vendhub.services.errors import InvalidRequest, NotFound
from vendhub.services.orders import expire_due_orders
from vendhub.services.ports import InvalidNotification

pytestmark = pytest.mark.integration

COCA_COLA = 8000  # slot 1 of the demo shop


def note(order_id: str, status: str, amount: int = COCA_COLA, **changes: Any) -> dict[str, Any]:
    body = midtrans_notification.build(
        order_id, amount, status, SERVER_KEY, transaction_id=f"tx-{order_id}"
    )
    body.update(changes)
    return body


async def receive(ctx: ServiceContext, body: dict[str, Any] | bytes) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (await payment_service.receive_notification(ctx, sandbox(), {}, raw)).value


async def assert_untouched(ctx: ServiceContext, order_id: str) -> None:
    """The order is exactly as placed: PENDING, reserved, nothing stored, nothing to send."""
    assert await order_status(ctx, order_id) == "PENDING"
    assert await count(ctx, payment_notifications) == 0
    assert await outbox_rows(ctx) == []
    [payment] = await rows(ctx, payments, payments.c.order_id == order_id)
    assert payment["status"] == "PENDING" and payment["paid_at"] is None
    assert (await slot_row(ctx, 1))["reserved"] == 1


@pytest.fixture
async def placed(ctx: ServiceContext) -> str:
    await quick_shop(ctx, stock=5)
    return await order(ctx, slot=1)


# --- signature and shape -------------------------------------------------------------------


async def test_forged_signature_is_refused_and_changes_nothing(
    ctx: ServiceContext, placed: str
) -> None:
    forged = note(placed, "settlement", signature_key="0" * 128)
    with pytest.raises(InvalidNotification):
        await receive(ctx, forged)
    await assert_untouched(ctx, placed)


async def test_notification_signed_with_another_key_is_refused(
    ctx: ServiceContext, placed: str
) -> None:
    body = midtrans_notification.build(
        placed, COCA_COLA, "settlement", "SB-Mid-server-attacker", transaction_id="tx"
    )
    with pytest.raises(InvalidNotification):
        await receive(ctx, body)
    await assert_untouched(ctx, placed)


async def test_signature_over_a_different_amount_is_refused(
    ctx: ServiceContext, placed: str
) -> None:
    # Signed for 8000.00, then the amount edited in transit: the signature no longer matches.
    tampered = note(placed, "settlement", gross_amount="1.00")
    with pytest.raises(InvalidNotification):
        await receive(ctx, tampered)
    await assert_untouched(ctx, placed)


MALFORMED = [b"not json", b"\xff\xfe", b"[1, 2]", b'"settlement"', b"{}", b'{"order_id": 5}']


async def test_malformed_notification_is_refused_and_changes_nothing(
    ctx: ServiceContext, placed: str
) -> None:
    for raw in MALFORMED:
        with pytest.raises(InvalidNotification):
            await receive(ctx, raw)
    await assert_untouched(ctx, placed)


async def test_notification_missing_a_signed_field_is_refused(
    ctx: ServiceContext, placed: str
) -> None:
    for field in ("order_id", "status_code", "gross_amount", "signature_key", "transaction_status"):
        body = note(placed, "settlement")
        del body[field]
        with pytest.raises(InvalidNotification):
            await receive(ctx, body)
    await assert_untouched(ctx, placed)


async def test_correctly_signed_amount_mismatch_is_rejected_and_order_not_paid(
    ctx: ServiceContext, placed: str
) -> None:
    with pytest.raises(InvalidRequest):
        await receive(ctx, note(placed, "settlement", amount=COCA_COLA - 1))
    await assert_untouched(ctx, placed)


async def test_notification_for_unknown_order_is_not_found(
    ctx: ServiceContext, placed: str
) -> None:
    with pytest.raises(NotFound):
        await receive(ctx, note("ORD-20261127-DEADBEEF", "settlement"))
    await assert_untouched(ctx, placed)


# --- idempotency and ordering --------------------------------------------------------------


async def test_duplicate_settlement_enqueues_exactly_one_dispense_command(
    ctx: ServiceContext, placed: str
) -> None:
    assert await receive(ctx, note(placed, "settlement")) == "paid"
    assert await receive(ctx, note(placed, "settlement")) == "duplicate"
    assert await receive(ctx, note(placed, "settlement")) == "duplicate"
    assert len(await outbox_rows(ctx, "dispense")) == 1
    assert await count(ctx, payment_notifications) == 1
    assert await order_status(ctx, placed) == "DISPENSING"


async def test_concurrent_duplicate_settlements_pay_once(ctx: ServiceContext, placed: str) -> None:
    body = note(placed, "settlement")
    outcomes = await asyncio.gather(*(receive(ctx, body) for _ in range(6)))
    assert sorted(outcomes) == ["duplicate"] * 5 + ["paid"]
    assert len(await outbox_rows(ctx, "dispense")) == 1
    assert await count(ctx, payment_notifications) == 1


async def test_second_settlement_with_another_transaction_id_is_owed_back(
    ctx: ServiceContext, placed: str
) -> None:
    assert await receive(ctx, note(placed, "settlement")) == "paid"
    again = note(placed, "settlement", transaction_id="tx-other")
    assert await receive(ctx, again) == "extra_payment"
    assert len(await outbox_rows(ctx, "dispense")) == 1
    [refund] = await rows(ctx, refunds, refunds.c.order_id == placed)
    assert (refund["reason"], refund["amount"]) == ("EXTRA_PAYMENT", COCA_COLA)


async def test_pending_after_settlement_does_not_unpay_the_order(
    ctx: ServiceContext, placed: str
) -> None:
    assert await receive(ctx, note(placed, "settlement")) == "paid"
    await receive(ctx, note(placed, "pending"))
    assert await order_status(ctx, placed) == "DISPENSING"
    [payment] = await rows(ctx, payments, payments.c.order_id == placed)
    assert payment["status"] == "PAID" and payment["paid_at"] is not None
    assert len(await outbox_rows(ctx, "dispense")) == 1


async def test_expire_after_settlement_does_not_close_a_paid_order(
    ctx: ServiceContext, placed: str
) -> None:
    assert await receive(ctx, note(placed, "settlement")) == "paid"
    assert await receive(ctx, note(placed, "expire")) == "ignored"
    assert await order_status(ctx, placed) == "DISPENSING"
    assert (await slot_row(ctx, 1))["reserved"] == 1


async def test_pending_notification_keeps_the_order_pending(
    ctx: ServiceContext, placed: str
) -> None:
    assert await receive(ctx, note(placed, "pending")) == "pending"
    assert await order_status(ctx, placed) == "PENDING"
    assert await outbox_rows(ctx) == []


@pytest.mark.parametrize(
    ("status", "closed_as"),
    [("expire", "EXPIRED"), ("deny", "CANCELLED"), ("cancel", "CANCELLED")],
)
async def test_unpaid_closing_notification_closes_order_and_releases_reservation(
    ctx: ServiceContext, placed: str, status: str, closed_as: str
) -> None:
    assert await receive(ctx, note(placed, status)) == "closed"
    assert await order_status(ctx, placed) == closed_as
    slot = await slot_row(ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (5, 0)
    [release] = await rows(ctx, stock_logs, stock_logs.c.order_id == placed)
    assert release["change_type"] == "RELEASE" and release["quantity_change"] == 0
    assert await outbox_rows(ctx) == []
    # A settlement arriving afterwards does not reopen it; the money is owed back instead.
    assert await receive(ctx, note(placed, "settlement")) == "late_payment"
    assert await order_status(ctx, placed) == closed_as
    assert (await slot_row(ctx, 1))["reserved"] == 0


async def test_settlement_after_local_expiry_keeps_order_expired_and_owes_refund(
    ctx: ServiceContext, placed: str, clock: Any
) -> None:
    clock.advance(ctx.tunables.order_ttl_s + 1)
    assert await expire_due_orders(ctx) == [placed]
    assert await receive(ctx, note(placed, "settlement")) == "late_payment"
    assert await order_status(ctx, placed) == "EXPIRED"
    [refund] = await rows(ctx, refunds, refunds.c.order_id == placed)
    assert (refund["reason"], refund["amount"], refund["status"]) == (
        "LATE_PAYMENT",
        COCA_COLA,
        "PENDING",
    )
    assert refund["dispense_id"] is None
    assert await outbox_rows(ctx, "dispense") == []
    assert (await slot_row(ctx, 1))["reserved"] == 0
    # Told twice, still owed once.
    assert await receive(ctx, note(placed, "settlement")) == "duplicate"
    assert await count(ctx, refunds) == 1


async def test_capture_challenged_by_fraud_check_does_not_pay(
    ctx: ServiceContext, placed: str
) -> None:
    assert await receive(ctx, note(placed, "capture", fraud_status="challenge")) == "pending"
    assert await order_status(ctx, placed) == "PENDING"
    assert await outbox_rows(ctx) == []


async def test_capture_accepted_by_fraud_check_pays(ctx: ServiceContext, placed: str) -> None:
    assert await receive(ctx, note(placed, "capture", fraud_status="accept")) == "paid"
    assert len(await outbox_rows(ctx, "dispense")) == 1


async def test_unknown_transaction_status_is_recorded_not_applied(
    ctx: ServiceContext, placed: str
) -> None:
    assert await receive(ctx, note(placed, "chargeback_pending")) == "recorded"
    assert await order_status(ctx, placed) == "PENDING"
    assert await count(ctx, payment_notifications) == 1


async def test_sandbox_pay_helper_goes_through_signed_path(
    ctx: ServiceContext, placed: str
) -> None:
    assert await pay(ctx, placed, COCA_COLA) == "paid"
    [stored] = await rows(ctx, payment_notifications)
    assert stored["outcome"] == "paid" and stored["transaction_status"] == "settlement"


# --- over HTTP ----------------------------------------------------------------------------


@pytest.fixture
async def http(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, ServiceContext, str]]:
    async with api_client(database_urls[backend]) as (client, container):
        await quick_shop(container.ctx, stock=5)
        created = await client.post("/api/orders", json={"slot_number": 1})
        assert created.status_code == 201, created.text
        # The customer's client: it holds the order's token, so it sees the payment details.
        client.headers["X-Order-Token"] = created.json()["access_token"]
        yield client, container.ctx, created.json()["order_id"]


async def test_webhook_forged_signature_is_401_and_changes_nothing(
    http: tuple[httpx.AsyncClient, ServiceContext, str],
) -> None:
    client, ctx, order_id = http
    forged = note(order_id, "settlement", signature_key="ab" * 64)
    assert_error(await client.post("/api/payments/webhook", json=forged), 401)
    await assert_untouched(ctx, order_id)


async def test_webhook_malformed_body_is_refused_with_error_shape(
    http: tuple[httpx.AsyncClient, ServiceContext, str],
) -> None:
    client, ctx, order_id = http
    for content in [*MALFORMED, b"", b"null", b'{"transaction_status": 1}']:
        response = await client.post(
            "/api/payments/webhook", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code in (401, 422), content
        assert_error(response, response.status_code)
    await assert_untouched(ctx, order_id)


async def test_webhook_amount_mismatch_is_422_and_order_not_paid(
    http: tuple[httpx.AsyncClient, ServiceContext, str],
) -> None:
    client, ctx, order_id = http
    body = note(order_id, "settlement", amount=COCA_COLA * 2)
    assert_error(await client.post("/api/payments/webhook", json=body), 422)
    await assert_untouched(ctx, order_id)


async def test_webhook_unknown_order_is_404(
    http: tuple[httpx.AsyncClient, ServiceContext, str],
) -> None:
    client, ctx, order_id = http
    body = note("ORD-20261127-00000000", "settlement")
    assert_error(await client.post("/api/payments/webhook", json=body), 404, "not_found")
    await assert_untouched(ctx, order_id)


async def test_webhook_settlement_pays_once_and_duplicate_answers_200(
    http: tuple[httpx.AsyncClient, ServiceContext, str],
) -> None:
    client, ctx, order_id = http
    body = note(order_id, "settlement")
    first = await client.post("/api/payments/webhook", json=body)
    second = await client.post("/api/payments/webhook", json=body)
    assert (first.status_code, first.json()["outcome"]) == (200, "paid")
    assert (second.status_code, second.json()["outcome"]) == (200, "duplicate")
    assert len(await outbox_rows(ctx, "dispense")) == 1
    # MQTT is down in this app: paid, commands written, waiting for the broker.
    assert await order_status(ctx, order_id) == "PENDING_DISPENSE"
    payment = (await client.get(f"/api/payments/{order_id}")).json()
    assert payment["status"] == "PAID" and payment["transaction_id"] == f"tx-{order_id}"


async def test_webhook_expire_closes_pending_order_and_releases_stock(
    http: tuple[httpx.AsyncClient, ServiceContext, str],
) -> None:
    client, ctx, order_id = http
    response = await client.post("/api/payments/webhook", json=note(order_id, "expire"))
    assert response.json()["outcome"] == "closed"
    assert (await client.get(f"/api/orders/{order_id}")).json()["status"] == "EXPIRED"
    assert (await slot_row(ctx, 1))["reserved"] == 0
