"""Midtrans request building and response parsing, over httpx.MockTransport (no network)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from vendhub.adapters.payments import midtrans_notification
from vendhub.adapters.payments.midtrans import (
    PRODUCTION_API,
    PRODUCTION_SNAP,
    SANDBOX_API,
    SANDBOX_SNAP,
    MidtransConfig,
    MidtransProvider,
)
from vendhub.services.context import PaymentPolicy
from vendhub.services.ports import (
    GatewayError,
    InvalidNotification,
    PaymentLine,
    PaymentRequest,
    RefundRequest,
)

KEY = "SB-Mid-server-unit"
Handler = Callable[[httpx.Request], httpx.Response]


def provider(handler: Handler) -> MidtransProvider:
    config = MidtransConfig(
        KEY, api_base_url="https://api.test", snap_base_url="https://app.test/snap"
    )
    return MidtransProvider(config, transport=httpx.MockTransport(handler))


def request(method: str | None = "qris") -> PaymentRequest:
    return PaymentRequest(
        order_id="ORD-1",
        amount=21000,
        lines=[
            PaymentLine(id="1", name="Coca Cola 330ml", price=8000, quantity=2),
            PaymentLine(id="2", name="A" * 80, price=5000, quantity=1),
        ],
        expiry_minutes=15,
        payment_method=method,
        customer_phone="0812",
    )


def answer(body: dict[str, Any], status: int = 200) -> Handler:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(status, json=body)

    handle.seen = seen  # type: ignore[attr-defined]
    return handle


def test_base_urls_follow_environment_and_overrides() -> None:
    sandbox = MidtransConfig.for_environment(KEY, production=False)
    production = MidtransConfig.for_environment(KEY, production=True)
    override = MidtransConfig.for_environment(
        KEY, production=True, api_base_url="http://a", snap_base_url="http://b"
    )
    assert (sandbox.api_base_url, sandbox.snap_base_url) == (SANDBOX_API, SANDBOX_SNAP)
    assert (production.api_base_url, production.snap_base_url) == (PRODUCTION_API, PRODUCTION_SNAP)
    assert (override.api_base_url, override.snap_base_url) == ("http://a", "http://b")


async def test_qris_charge_request_is_authenticated_idempotent_and_sums_items() -> None:
    handler = answer(
        {
            "status_code": "201",
            "transaction_id": "tx-1",
            "qr_string": "00020101",
            "actions": [{"name": "generate-qr-code", "method": "GET", "url": "https://qr"}],
            "expiry_time": "2026-11-27 15:15:00",
        }
    )
    got = await provider(handler).create_payment(request("qris"))
    [sent] = handler.seen  # type: ignore[attr-defined]
    assert (sent.method, str(sent.url)) == ("POST", "https://api.test/v2/charge")
    assert sent.headers["authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    assert sent.headers["idempotency-key"] == "charge-ORD-1"
    body = json.loads(sent.content)
    assert body["payment_type"] == "qris"
    assert body["transaction_details"] == {"order_id": "ORD-1", "gross_amount": 21000}
    assert sum(i["price"] * i["quantity"] for i in body["item_details"]) == 21000
    assert max(len(i["name"]) for i in body["item_details"]) == 50
    assert body["custom_expiry"] == {"expiry_duration": 15, "unit": "minute"}
    assert (got.qr_string, got.qr_url, got.transaction_id) == ("00020101", "https://qr", "tx-1")
    # Jakarta wall-clock time, stored as UTC.
    assert got.expires_at == datetime(2026, 11, 27, 8, 15, tzinfo=UTC)


async def test_qris_charge_accepts_expire_time_spelling() -> None:
    handler = answer({"status_code": "201", "qr_string": "x", "expire_time": "2026-11-27 15:00:00"})
    got = await provider(handler).create_payment(request("qris"))
    assert got.expires_at == datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


async def test_snap_request_has_expiry_and_returns_token_and_redirect() -> None:
    handler = answer({"token": "tok", "redirect_url": "https://app.test/snap/v4/tok"}, status=201)
    got = await provider(handler).create_payment(request(None))
    [sent] = handler.seen  # type: ignore[attr-defined]
    assert str(sent.url) == "https://app.test/snap/v1/transactions"
    body = json.loads(sent.content)
    assert body["expiry"] == {"unit": "minute", "duration": 15}
    assert "enabled_payments" not in body and body["customer_details"] == {"phone": "0812"}
    assert (got.token, got.redirect_url) == ("tok", "https://app.test/snap/v4/tok")


async def test_snap_validation_error_is_not_retryable() -> None:
    handler = answer({"error_messages": ["gross_amount is not equal"]}, status=400)
    with pytest.raises(GatewayError) as caught:
        await provider(handler).create_payment(request(None))
    assert not caught.value.retryable and "gross_amount" in str(caught.value)


def signed_status(status: str, key: str = KEY) -> dict[str, Any]:
    return midtrans_notification.build("ORD-1", 21000, status, key, transaction_id="tx-1")


async def test_status_answer_becomes_a_notification_from_the_status_source() -> None:
    note = await provider(answer(signed_status("settlement"))).fetch_status("ORD-1")
    assert note is not None
    assert (note.status, note.amount, note.source) == ("PAID", 21000, "status")


async def test_status_with_a_wrong_signature_is_refused() -> None:
    with pytest.raises(InvalidNotification):
        await provider(answer(signed_status("settlement", "other"))).fetch_status("ORD-1")


async def test_status_of_an_unknown_transaction_is_none() -> None:
    body = {"status_code": "404", "status_message": "Transaction doesn't exist."}
    assert await provider(answer(body, status=404)).fetch_status("ORD-1") is None
    assert await provider(answer(body)).fetch_status("ORD-1") is None


async def test_refund_sends_key_amount_reason_and_reads_the_result() -> None:
    handler = answer({"status_code": "200", "refund_chargeback_id": 7, "refund_key": "k"})
    got = await provider(handler).refund(RefundRequest("ORD-1", "refund-abc", 8000, "jam"))
    [sent] = handler.seen  # type: ignore[attr-defined]
    assert str(sent.url) == "https://api.test/v2/ORD-1/refund"
    assert json.loads(sent.content) == {"refund_key": "refund-abc", "amount": 8000, "reason": "jam"}
    assert sent.headers["idempotency-key"] == "refund-abc"
    assert (got.amount, got.provider_ref) == (8000, "7")


async def test_refund_of_a_second_transaction_names_that_transaction() -> None:
    handler = answer({"status_code": "200", "refund_chargeback_id": 8})
    request = RefundRequest("ORD-1", "extra-ORD-1-2", 8000, "extra", transaction_id="tx-2")
    await provider(handler).refund(request)
    [sent] = handler.seen  # type: ignore[attr-defined]
    assert str(sent.url) == "https://api.test/v2/tx-2/refund"


@pytest.mark.parametrize(
    ("status", "body", "retryable"),
    [
        (200, {"status_code": "412", "status_message": "cannot be refunded"}, False),
        (200, {"status_code": "406", "status_message": "duplicate"}, False),
        (500, {"status_code": "500"}, True),
        (503, {}, True),
        (200, {"status_code": "500", "status_message": "internal"}, True),
    ],
)
async def test_refund_refusals_and_outages_are_told_apart(
    status: int, body: dict[str, Any], retryable: bool
) -> None:
    with pytest.raises(GatewayError) as caught:
        await provider(answer(body, status)).refund(RefundRequest("ORD-1", "k", 1, "r"))
    assert caught.value.retryable is retryable


async def test_timeout_is_retryable() -> None:
    def hang(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=req)

    with pytest.raises(GatewayError) as caught:
        await provider(hang).refund(RefundRequest("ORD-1", "k", 1, "r"))
    assert caught.value.retryable


@pytest.mark.parametrize("body", [{"status_code": "407"}, {"status_code": "404"}])
async def test_expire_succeeds_when_expired_or_never_created(body: dict[str, Any]) -> None:
    handler = answer(body)
    await provider(handler).expire("ORD 1")
    [sent] = handler.seen  # type: ignore[attr-defined]
    assert sent.url.raw_path == b"/v2/ORD%201/expire"
    assert sent.headers["idempotency-key"] == "expire-ORD 1"


async def test_expire_of_a_paid_transaction_is_a_refusal() -> None:
    with pytest.raises(GatewayError) as caught:
        await provider(answer({"status_code": "412"})).expire("ORD-1")
    assert caught.value.status_code == "412" and not caught.value.retryable


def test_partial_refund_notifications_are_distinct_events() -> None:
    refunds = [{"refund_amount": "5000.00", "refund_key": "refund-a"}]
    first = midtrans_notification.build(
        "ORD-1", 21000, "partial_refund", KEY, transaction_id="tx", refunds=refunds
    )
    second = midtrans_notification.build(
        "ORD-1",
        21000,
        "partial_refund",
        KEY,
        transaction_id="tx",
        refunds=[*refunds, {"refund_amount": "8000.00", "refund_key": "refund-b"}],
    )
    a = midtrans_notification.verify(json.dumps(first).encode(), KEY)
    b = midtrans_notification.verify(json.dumps(second).encode(), KEY)
    assert (a.refund_amount, a.refund_keys) == (5000, ("refund-a",))
    assert (b.refund_amount, b.refund_keys) == (13000, ("refund-a", "refund-b"))
    assert a.dedup_id != b.dedup_id and a.status == "REFUNDED"


def test_refund_backoff_doubles_and_is_capped() -> None:
    policy = PaymentPolicy(backoff_base_s=30, backoff_max_s=300)
    assert [policy.backoff(n) for n in range(1, 7)] == [30, 60, 120, 240, 300, 300]


def test_a_challenged_capture_and_its_approval_are_distinct_events() -> None:
    challenged = midtrans_notification.build("ORD-1", 8000, "capture", KEY, transaction_id="tx")
    challenged["fraud_status"] = "challenge"
    accepted = midtrans_notification.build("ORD-1", 8000, "capture", KEY, transaction_id="tx")
    a = midtrans_notification.verify(json.dumps(challenged).encode(), KEY)
    b = midtrans_notification.verify(json.dumps(accepted).encode(), KEY)
    assert a.dedup_id != b.dedup_id and a.transaction_id == b.transaction_id == "tx"
    long = midtrans_notification.build("ORD-1", 8000, "capture", KEY, transaction_id="t" * 64)
    assert len(midtrans_notification.verify(json.dumps(long).encode(), KEY).dedup_id) <= 64


def test_every_listed_refund_is_read_with_its_key_gateway_id_and_amount() -> None:
    refunds = [
        {"refund_amount": "5000.00", "refund_key": "refund-a", "refund_chargeback_id": 1},
        {"refund_amount": "3000.00", "refund_chargeback_id": 2},  # made in the dashboard
    ]
    body = midtrans_notification.build(
        "ORD-1", 8000, "refund", KEY, transaction_id="tx", refunds=refunds
    )
    note = midtrans_notification.verify(json.dumps(body).encode(), KEY)
    assert note.refund_items == (("refund-a", "1", 5000), (None, "2", 3000))
    assert (note.refund_amount, note.refund_keys) == (8000, ("refund-a",))
