"""Hostile HTTP input is a 4xx in the usual error shape, never a 5xx, on every database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.helpers import (
    SERVER_KEY,
    api_client,
    assert_error,
    bearer,
    count,
    quick_shop,
)
from tests.midtrans_standin import serve
from vendhub.adapters.db.tables import orders, payment_notifications
from vendhub.domain.payments import format_rupiah, midtrans_signature

pytestmark = pytest.mark.integration


@dataclass
class Target:
    client: httpx.AsyncClient
    container: Any
    admin: dict[str, str]


@pytest.fixture
async def target(engine: Any, backend: str, database_urls: dict[str, str]) -> AsyncIterator[Target]:
    async with api_client(database_urls[backend]) as (client, container):
        await quick_shop(container.ctx, stock=5)
        yield Target(client, container, bearer(container, "user-admin", "SUPER_ADMIN", "admin"))


def is_4xx(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return assert_error(response, response.status_code)


async def test_json_nested_30000_deep_is_a_4xx_not_a_recursion_error(target: Target) -> None:
    deep = b"[" * 30000
    for path in ("/api/payments/webhook", "/api/orders", "/api/auth/login"):
        response = await target.client.post(
            path, content=deep, headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (400, 413, 422), (path, response.text)
        is_4xx(response)
    inside_strings = json.dumps({"slot_number": 1, "customer_phone": "[" * 20})
    ok = await target.client.post(
        "/api/orders", content=inside_strings, headers={"Content-Type": "application/json"}
    )
    assert ok.status_code == 201, ok.text


async def test_nul_bytes_anywhere_are_refused_and_change_nothing(target: Target) -> None:
    client, admin = target.client, target.admin
    cases = [
        client.get("/api/orders/ORD%00X"),
        client.get("/api/products/abc%00"),
        client.get("/api/orders", params={"machine_id": "VM\x0001"}, headers=admin),
        client.get("/api/products", params={"machine_id": "VM01\x00"}),
        client.post("/api/auth/login", json={"username": "admin\x00", "password": "x"}),
        client.post("/api/orders", json={"slot_number": 1, "customer_phone": "0811\x00"}),
        client.patch("/api/machines/VM01", json={"location": "Lobby\x00"}, headers=admin),
        client.post("/api/machines", json={"id": "VM\x0009", "name": "n"}, headers=admin),
    ]
    for pending in cases:
        is_4xx(await pending)
    assert await count(target.container.ctx, orders) == 0


async def test_strings_longer_than_their_columns_are_refused(target: Target) -> None:
    client, admin = target.client, target.admin
    long_id = "O" * 500
    assert_error(await client.get(f"/api/orders/{long_id}"), 404)
    is_4xx(await client.post(f"/api/payments/cancel/{long_id}"))
    is_4xx(await client.get(f"/api/stock/{long_id}", headers=admin))
    is_4xx(await client.patch("/api/machines/VM01", json={"location": "x" * 256}, headers=admin))
    is_4xx(await client.post("/api/orders", json={"slot_number": 1, "customer_phone": "1" * 33}))
    is_4xx(await client.post("/api/auth/login", json={"username": "u" * 65, "password": "p"}))


def signed(order_id: str, amount: int, **fields: Any) -> bytes:
    status_code, gross = "200", format_rupiah(amount)
    body = {
        "order_id": order_id,
        "status_code": status_code,
        "gross_amount": gross,
        "signature_key": midtrans_signature(order_id, status_code, gross, SERVER_KEY),
        "transaction_status": "settlement",
        "transaction_id": "tx-1",
        "fraud_status": "accept",
        "payment_type": "qris",
        **fields,
    }
    return json.dumps(body).encode()


async def test_signed_webhook_with_oversized_fields_is_refused(target: Target) -> None:
    created = await target.client.post("/api/orders", json={"slot_number": 1})
    order_id, amount = created.json()["order_id"], created.json()["total_amount"]
    headers = {"Content-Type": "application/json"}
    for fields in (
        {"transaction_id": "t" * 500},
        {"transaction_status": "s" * 100},
        {"payment_type": "p" * 100},
        {"fraud_status": "f" * 100},
        {"transaction_id": "HUGE-INT"},
    ):
        # An integer of 5,000 digits: more than Python converts to str by default.
        content = signed(order_id, amount, **fields).replace(b'"HUGE-INT"', b"9" * 5000)
        response = await target.client.post(
            "/api/payments/webhook", content=content, headers=headers
        )
        is_4xx(response)
    assert await count(target.container.ctx, payment_notifications) == 0
    fine = await target.client.post(
        "/api/payments/webhook", content=signed(order_id, amount), headers=headers
    )
    assert fine.status_code == 200, fine.text


async def test_integers_beyond_bigint_are_refused(target: Target) -> None:
    client, admin = target.client, target.admin
    for value in (2**63, 2**63 - 1, 10**30, -(2**63) - 1):
        body = {"price_override": value}
        is_4xx(await client.put("/api/machines/VM01/slots/1", json=body, headers=admin))
        is_4xx(await client.post("/api/orders", json={"slot_number": value}))
        is_4xx(
            await client.post("/api/products", json={"name": "Big", "price": value}, headers=admin)
        )
    is_4xx(await client.get("/api/orders", params={"limit": 2**64}, headers=admin))
    body = {"capacity": 1}
    is_4xx(await client.put(f"/api/machines/VM01/slots/{2**64}", json=body, headers=admin))


async def test_datetimes_out_of_range_are_422(target: Target) -> None:
    client, admin = target.client, target.admin
    for since in (
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-12:00",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
    ):
        assert_error(
            await client.get("/api/telemetry/VM01", params={"since": since}, headers=admin), 422
        )
    for key, value in (("from", "0001-01-01T00:00:00+14:00"), ("to", "9999-12-31T23:59:59-12:00")):
        assert_error(
            await client.get("/api/finance/summary", params={key: value}, headers=admin), 422
        )
    fine = await client.get(
        "/api/finance/summary",
        params={"from": "2026-01-01T00:00:00+07:00", "to": "2027-01-01T00:00:00Z"},
        headers=admin,
    )
    assert fine.status_code == 200, fine.text


async def test_null_for_a_non_nullable_field_is_422_and_nullable_ones_still_clear(
    target: Target,
) -> None:
    client, admin = target.client, target.admin
    for body in ({"is_active": None}, {"name": None}, {"telemetry_interval_s": None}):
        assert_error(await client.patch("/api/machines/VM01", json=body, headers=admin), 422)
    for body in ({"capacity": None}, {"motor_duration_ms": None}, {"is_active": None}):
        assert_error(await client.put("/api/machines/VM01/slots/1", json=body, headers=admin), 422)
    cleared = await client.patch("/api/machines/VM01", json={"location": None}, headers=admin)
    assert cleared.status_code == 200 and cleared.json()["location"] is None
    no_override = await client.put(
        "/api/machines/VM01/slots/1", json={"price_override": None}, headers=admin
    )
    assert no_override.status_code == 200


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"[" * size if sent else b'{"a": "' + b"x" * (size - 7)
        sent += size


async def test_a_chunked_body_without_length_is_cut_off_at_the_cap(
    target: Target,
) -> None:
    """On a real HTTP server: 10 MB streamed without Content-Length gets 413 at 64 KiB."""
    from vendhub.entrypoints.api.app import create_app

    app = create_app(container=target.container, workers=False)
    async with serve(app, free_port()) as url, httpx.AsyncClient(base_url=url) as http:
        streamed = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal streamed
            for chunk in chunks(10 * 1024 * 1024):
                streamed += len(chunk)
                yield chunk

        try:
            response = await http.post(
                "/api/payments/webhook",
                content=counted(),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError:
            pytest.fail("the server dropped the connection instead of answering 413")
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "payload_too_large")
        small = await http.post("/api/orders", json={"slot_number": 1})
        assert small.status_code == 201
