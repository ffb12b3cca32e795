"""The seed's test-order.js and its kiosk's purchase, request by request, reading its fields."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.compat.conftest import COCA_COLA, Seed
from tests.integration.helpers import assert_error, outbox_rows, slot_row

pytestmark = [pytest.mark.integration, pytest.mark.compat]


async def test_available_products_answer_the_seed_envelope_with_its_item_fields(
    seed: Seed,
) -> None:
    body = await seed.ok("GET", "/api/products/available", params={"machine_id": "VM01"})
    assert body["success"] is True and body["count"] == len(body["data"]) == 6
    assert body["products"] == body["data"]  # older scripts read `products`
    first = body["data"][0]
    assert (first["slot_number"], first["product_name"], first["final_price"]) == (
        1,
        "Coca Cola 330ml",
        COCA_COLA,
    )
    assert first["current_stock"] == 5 and first["slot_id"] and first["product_id"] == first["id"]


async def test_test_order_js_buys_what_the_list_offers_and_reads_the_kiosk_fields(
    seed: Seed,
) -> None:
    [first, *_] = (await seed.ok("GET", "/api/products/available"))["data"]
    created = await seed.ok(
        "POST",
        "/api/orders",
        201,
        json={
            "machine_id": "VM01",
            "slot_id": first["slot_id"],
            "quantity": 1,
            "payment_method": "qris",
        },
    )
    order_id = created["order_id"]
    assert created["success"] is True and created["status"] == "PENDING"
    assert (created["product_name"], created["unit_price"], created["quantity"]) == (
        "Coca Cola 330ml",
        COCA_COLA,
        1,
    )
    assert created["payment_url"] and created["payment_token"] and created["qr_string"]
    assert created["payment_url"] == created["payment"]["redirect_url"]
    # The kiosk polls the order while the customer pays.
    polled = await seed.ok("GET", f"/api/orders/{order_id}")
    assert (polled["status"], polled["payment_status"]) == ("PENDING", "PENDING")
    assert (polled["product_name"], polled["slot_number"], polled["quantity"]) == (
        "Coca Cola 330ml",
        1,
        1,
    )
    assert polled["payment_processed_at"] is None
    # The testing guide's step 4: simulate the payment.
    paid = await seed.ok(
        "POST", f"/api/debug/update-payment/{order_id}", json={"status": "SUCCESS"}
    )
    assert paid["success"] is True
    polled = await seed.ok("GET", f"/api/orders/{order_id}")
    assert (polled["status"], polled["payment_status"]) == ("DISPENSING", "PAID")
    assert polled["payment_processed_at"] is not None
    [command] = [r["body"] for r in await outbox_rows(seed.ctx, "dispense")]
    assert {k: command[k] for k in ("cmd", "slot", "orderId", "timeoutMs")} == {
        "cmd": "dispense",
        "slot": 1,
        "orderId": order_id,
        "timeoutMs": 2150,
    }
    # Step 5: the machine answers as `test-mqtt.js simulate` does; step 6: the seed's SQL.
    assert await seed.machine_result(order_id, 1) == "APPLIED"
    polled = await seed.ok("GET", f"/api/orders/{order_id}")
    assert polled["status"] == "COMPLETED" and polled["dispensed_at"] is not None
    async with seed.ctx.engine.connect() as conn:
        log = (
            (
                await conn.execute(
                    sa.text("SELECT * FROM dispense_logs WHERE order_id = :o"), {"o": order_id}
                )
            )
            .mappings()
            .one()
        )
    assert (log["success"], log["drop_detected"], log["duration_ms"]) == (1, 1, 1850)


@pytest.mark.parametrize("slot_id", [1, "1"])
async def test_numeric_slot_ids_as_numbers_or_strings_name_the_slot_number(
    seed: Seed, slot_id: int | str
) -> None:
    created = await seed.ok("POST", "/api/orders", 201, json={"slot_id": slot_id, "quantity": 2})
    assert (created["slot_number"], created["quantity"]) == (1, 2)
    assert (await slot_row(seed.ctx, 1))["reserved"] == 2


@pytest.mark.parametrize(
    ("method", "stored"),
    [
        ("qris", "qris"),
        ("va", "va"),
        ("gopay", "gopay"),
        ("shopeepay", "shopeepay"),
        ("midtrans", "snap"),
        ("QRIS", "qris"),
    ],
)
async def test_the_seeds_payment_methods_are_accepted(seed: Seed, method: str, stored: str) -> None:
    created = await seed.ok(
        "POST", "/api/orders", 201, json={"slot_id": "2", "payment_method": method}
    )
    assert created["payment_method"] == stored


async def test_unknown_methods_and_bad_slot_ids_are_refused_and_reserve_nothing(
    seed: Seed,
) -> None:
    for body in (
        {"slot_id": 1, "payment_method": "cash"},
        {"slot_id": True},
        {"slot_id": 1.5},
        {"slot_id": "x" * 41},
        {"slot_id": 1, "slot_number": 1},
    ):
        assert_error(await seed.client.post("/api/orders", json=body), 422, "validation_error")
    for slot_id in ("999", "9999999999999", "not-a-slot"):
        assert_error(await seed.client.post("/api/orders", json={"slot_id": slot_id}), 404)
    assert (await slot_row(seed.ctx, 1))["reserved"] == 0


async def test_public_order_fields_are_a_separate_part_without_the_customer(seed: Seed) -> None:
    """The anonymous shape (OrderStatusPublic) carries no phone, payment or refund details."""
    from vendhub.entrypoints.api.routers.orders import order_status_public
    from vendhub.services.orders import get_order

    created = await seed.ok(
        "POST", "/api/orders", 201, json={"slot_number": 1, "customer_phone": "+628123456789"}
    )
    assert created["customer_phone"] == "+628123456789"
    public = order_status_public(await get_order(seed.ctx, created["order_id"]))
    dumped = public.model_dump(mode="json")
    assert "+628123456789" not in str(dumped)
    assert not {"customer_phone", "payment", "payment_token", "refunds"} & set(dumped)
    assert {"status", "payment_status", "product_name", "slot_number", "quantity"} <= set(dumped)
    assert {k: created[k] for k in dumped} == dumped
