"""The seed's Next.js kiosk and admin calls beyond the purchase: each answered safely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.compat.conftest import Gateway, Seed
from tests.integration.helpers import (
    assert_error,
    order_status,
    outbox_rows,
    rows,
    slot_row,
)
from vendhub.adapters.db.tables import machine_events, stock_logs
from vendhub.protocol.messages import Telemetry
from vendhub.services import fleet

pytestmark = [pytest.mark.integration, pytest.mark.compat]


async def _order(seed: Seed, method: str | None = None, slot: int = 1) -> dict[str, object]:
    body: dict[str, object] = {"slot_number": slot}
    if method:
        body["payment_method"] = method
    return await seed.ok("POST", "/api/orders", 201, json=body)


# --- payments: method switch and verify ----------------------------------------------------


async def test_switching_the_method_makes_a_new_payment_for_the_unpaid_order(seed: Seed) -> None:
    created = await _order(seed, "qris")
    token = {"X-Order-Token": str(created["access_token"])}
    url = f"/api/payments/method/{created['order_id']}"
    # Switching the method changes someone's payment: it needs the order's access token.
    assert_error(await seed.client.patch(url, json={"payment_method": "gopay"}), 401)
    switched = await seed.ok("PATCH", url, json={"payment_method": "gopay"}, headers=token)
    assert switched["payment_method"] == "gopay"
    assert switched["payment_token"] != created["payment_token"]
    again = await seed.ok("PATCH", url, json={"payment_method": "GOPAY"}, headers=token)
    assert again["payment_token"] == switched["payment_token"]  # same method: nothing new


async def test_the_method_of_a_paid_or_unknown_order_cannot_change(seed: Seed) -> None:
    created = await _order(seed, "qris")
    order_id = created["order_id"]
    token = {"X-Order-Token": str(created["access_token"])}
    await seed.ok("POST", f"/api/debug/update-payment/{order_id}", json={"status": "SUCCESS"})
    body = {"payment_method": "va"}
    url = f"/api/payments/method/{order_id}"
    assert_error(await seed.client.patch(url, json=body, headers=token), 409, "conflict")
    assert_error(await seed.client.patch("/api/payments/method/NOPE", json=body), 404)
    bad = {"payment_method": "cash"}
    assert_error(await seed.client.patch(url, json=bad, headers=token), 422)


async def test_verify_ignores_the_callers_success_and_reports_the_real_status(
    seed: Seed,
) -> None:
    created = await _order(seed, "qris")
    order_id = created["order_id"]
    claimed = await seed.ok("POST", f"/api/payments/verify/{order_id}", json={"status": "SUCCESS"})
    assert (claimed["status"], claimed["payment_status"], claimed["paid"]) == (
        "PENDING",
        "PENDING",
        False,
    )
    assert await order_status(seed.ctx, order_id) == "PENDING"
    assert await outbox_rows(seed.ctx, "dispense") == []
    assert_error(await seed.client.post("/api/payments/verify/NOPE"), 404)


async def test_verify_asks_the_gateway_and_applies_a_payment_whose_webhook_was_lost(
    gateway: Gateway,
) -> None:
    created = await gateway.ok(
        "POST", "/api/orders", 201, json={"slot_number": 1, "payment_method": "qris"}
    )
    order_id = created["order_id"]
    first = await gateway.ok("POST", f"/api/payments/verify/{order_id}", json={})
    assert (first["status"], first["asked_gateway"]) == ("PENDING", True)
    gateway.standin.pay(order_id)
    gateway.standin.drop_notifications()  # the webhook never comes
    # Asked a moment ago: not again (a kiosk polling verify cannot hammer the gateway).
    soon = await gateway.ok("POST", f"/api/payments/verify/{order_id}", json={})
    assert (soon["status"], soon["asked_gateway"]) == ("PENDING", False)
    gateway.clock.advance(6)
    verified = await gateway.ok(
        "POST", f"/api/payments/verify/{order_id}", json={"status": "SUCCESS"}
    )
    assert (verified["status"], verified["payment_status"], verified["paid"]) == (
        "DISPENSING",
        "PAID",
        True,
    )
    assert verified["asked_gateway"] is True
    assert len(await outbox_rows(gateway.ctx, "dispense")) == 1
    status_calls = [p for m, p, *_ in gateway.standin.requests if p.endswith("/status")]
    assert len(status_calls) == 2


async def test_a_method_the_gateway_refuses_keeps_the_current_payment(gateway: Gateway) -> None:
    created = await gateway.ok(
        "POST", "/api/orders", 201, json={"slot_number": 1, "payment_method": "qris"}
    )
    order_id = created["order_id"]
    # Midtrans keeps one transaction per order id: Snap refuses one already charged as QRIS.
    token = {"X-Order-Token": str(created["access_token"])}
    refused = await gateway.client.patch(
        f"/api/payments/method/{order_id}", json={"payment_method": "gopay"}, headers=token
    )
    assert_error(refused, 409, "conflict")
    kept = await gateway.ok("GET", f"/api/orders/{order_id}", headers=token)
    assert (kept["payment_method"], kept["qr_string"]) == ("qris", created["qr_string"])
    assert kept["status"] == "PENDING"


# --- orders per machine, temperature -----------------------------------------------------


async def test_orders_of_a_machine_are_for_operators_and_paginated(seed: Seed) -> None:
    ids = [(await _order(seed, slot=s))["order_id"] for s in (1, 2, 3)]
    assert_error(await seed.client.get("/api/orders/machine/VM01"), 401)
    first = await seed.ok(
        "GET", "/api/orders/machine/VM01", params={"limit": 2}, headers=seed.admin
    )
    assert (first["success"], first["count"], first["next_offset"]) == (True, 2, 2)
    rest = await seed.ok(
        "GET", "/api/orders/machine/VM01", params={"offset": 2}, headers=seed.admin
    )
    assert (rest["count"], rest["next_offset"]) == (1, None)
    listed = [o["order_id"] for o in first["data"] + rest["data"]]
    assert sorted(listed) == sorted(ids)
    assert_error(await seed.client.get("/api/orders/machine/NOPE", headers=seed.admin), 404)


async def test_temperature_comes_from_telemetry_newest_first(seed: Seed) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    await fleet.store_telemetry(
        seed.ctx,
        [
            fleet.TelemetryReading(
                "VM01", now - timedelta(minutes=5), Telemetry(temperature=6.0), {}
            ),
            fleet.TelemetryReading(
                "VM01", now, Telemetry.from_raw({"temp": 4.5, "humidity": 60}), {}
            ),
            fleet.TelemetryReading("VM01", now, Telemetry(rssi=-60), {}),
        ],
    )
    body = await seed.ok("GET", "/api/temperature/VM01")
    assert (body["success"], body["temperature"], body["humidity"]) == (True, 4.5, 60.0)
    assert [r["temperature"] for r in body["data"]] == [4.5, 6.0]
    assert "rssi" not in body["data"][0] and "payload" not in body["data"][0]
    assert_error(await seed.client.get("/api/temperature/NOPE"), 404)


# --- machine status, slot assignment, stock by slot_id -------------------------------------


async def test_operators_set_maintenance_and_back_online_recorded_as_events(seed: Seed) -> None:
    tech = bearer_for(seed, "TECHNICIAN")
    body = {"status": "maintenance", "reason": "cleaning"}
    assert_error(await seed.client.post("/api/machines/VM01/status", json=body), 401)
    inventory = bearer_for(seed, "INVENTORY")
    assert_error(
        await seed.client.post("/api/machines/VM01/status", json=body, headers=inventory), 403
    )
    # Placed before maintenance (a machine in MAINTENANCE takes no new orders: 409) ...
    order_id = (await _order(seed))["order_id"]
    down = await seed.ok("POST", "/api/machines/VM01/status", json=body, headers=tech)
    assert down["data"]["status"] == "MAINTENANCE"
    assert_error(await seed.client.post("/api/orders", json={"slot_number": 1}), 409)
    # ... and paid during it, the unit waits and goes out when the operator ends it.
    await seed.ok("POST", f"/api/debug/update-payment/{order_id}", json={"status": "SUCCESS"})
    assert await order_status(seed.ctx, order_id) == "PENDING_DISPENSE"
    assert await outbox_rows(seed.ctx, "dispense") == []
    up = await seed.ok("POST", "/api/machines/VM01/status", json={"status": "active"}, headers=tech)
    assert up["data"]["status"] == "ONLINE"
    assert up["data"]["last_seen_at"] is None  # an operator's word is no sign of life
    [command] = [r["body"] for r in await outbox_rows(seed.ctx, "dispense")]
    assert command["orderId"] == order_id
    events = await rows(seed.ctx, machine_events)
    assert [e["status"] for e in events] == ["MAINTENANCE", "ONLINE"]
    assert events[0]["details"] == {"by": "technician", "reason": "cleaning"}
    bad = {"status": "EXPLODED"}
    assert_error(await seed.client.post("/api/machines/VM01/status", json=bad, headers=tech), 422)
    assert_error(await seed.client.post("/api/machines/NOPE/status", json=body, headers=tech), 404)


async def test_assigning_a_product_to_a_slot_by_number_or_seed_id(seed: Seed) -> None:
    product = await seed.ok(
        "POST", "/api/products", 201, json={"name": "Pocari", "price": 7000}, headers=seed.admin
    )
    assigned = await seed.ok(
        "POST",
        "/api/machines/VM01/slots/assign",
        json={"slot_id": 7, "product_id": product["id"], "capacity": 8},
        headers=seed.admin,
    )
    assert (assigned["data"]["slot_number"], assigned["data"]["product_name"]) == (7, "Pocari")
    slot_id = assigned["data"]["id"]
    again = await seed.ok(
        "POST",
        "/api/machines/VM01/slots/assign",
        json={"slot_id": slot_id, "product_id": product["id"], "price_override": 6500},
        headers=seed.admin,
    )
    assert (again["data"]["slot_number"], again["data"]["price"]) == (7, 6500)
    missing = {"slot_number": 7, "product_id": "NOPE"}
    assert_error(
        await seed.client.post("/api/machines/VM01/slots/assign", json=missing, headers=seed.admin),
        404,
    )
    assert_error(await seed.client.post("/api/machines/VM01/slots/assign", json=missing), 401)


async def test_reassigning_a_slot_with_open_reservations_is_refused(seed: Seed) -> None:
    await _order(seed, slot=1)
    other = (await seed.ok("GET", "/api/products/available"))["data"][1]["product_id"]
    body = {"slot_number": 1, "product_id": other}
    refused = await seed.client.post(
        "/api/machines/VM01/slots/assign", json=body, headers=seed.admin
    )
    assert_error(refused, 409, "conflict")
    first = (await seed.ok("GET", "/api/products/available"))["data"][0]
    assert first["product_name"] == "Coca Cola 330ml"


async def test_stock_update_by_seed_slot_id_and_quantity(seed: Seed) -> None:
    [first, *_] = (await seed.ok("GET", "/api/products/available"))["data"]
    restock = await seed.ok(
        "POST",
        "/api/stock/update",
        json={"slot_id": first["slot_id"], "quantity": 3},
        headers=seed.admin,
    )
    assert (restock["slot_number"], restock["stock_before"], restock["current_stock"]) == (1, 5, 8)
    audit = await seed.ok(
        "POST",
        "/api/stock/update",
        json={"slot_id": "2", "quantity": 4, "change_type": "AUDIT"},
        headers=seed.admin,
    )
    assert (audit["slot_number"], audit["current_stock"]) == (2, 4)
    logs = [(r["change_type"], r["quantity_change"]) for r in await rows(seed.ctx, stock_logs)]
    assert logs == [("RESTOCK", 3), ("AUDIT", -1)]
    for body in (
        {"slot_id": first["slot_id"], "quantity": 1, "quantity_change": 1},
        {"slot_id": first["slot_id"], "slot_number": 1, "quantity": 1},
        {"quantity": 1},
    ):
        assert_error(
            await seed.client.post("/api/stock/update", json=body, headers=seed.admin), 422
        )
    assert_error(
        await seed.client.post(
            "/api/stock/update", json={"slot_id": "nope", "quantity": 1}, headers=seed.admin
        ),
        404,
    )
    assert (await slot_row(seed.ctx, 1))["current_stock"] == 8


# --- every list: one envelope, bounded pages ----------------------------------------------


async def test_every_list_endpoint_answers_the_envelope_and_bounds_its_page(seed: Seed) -> None:
    await _order(seed)
    lists = (
        "/api/products",
        "/api/products/available",
        "/api/machines",
        "/api/machines/VM01/slots",
        "/api/orders",
        "/api/orders/machine/VM01",
        "/api/dispense/logs/VM01",
        "/api/stock/VM01",
        "/api/stock/logs/VM01",
        "/api/telemetry/VM01",
        "/api/temperature/VM01",
    )
    for path in lists:
        body = await seed.ok("GET", path, params={"limit": 1}, headers=seed.admin)
        assert body["success"] is True and isinstance(body["data"], list), path
        assert body["count"] == len(body["data"]) <= 1 and body["limit"] == 1, path
        assert_error(await seed.client.get(path, params={"limit": 501}, headers=seed.admin), 422)
        assert_error(await seed.client.get(path, params={"offset": -1}, headers=seed.admin), 422)
    slots = await seed.ok(
        "GET", "/api/machines/VM01/slots", params={"limit": 4, "offset": 4}, headers=seed.admin
    )
    assert [s["slot_number"] for s in slots["data"]] == [5, 6] and slots["next_offset"] is None


def bearer_for(seed: Seed, role: str) -> dict[str, str]:
    from tests.integration.helpers import bearer

    return bearer(seed.container, f"user-{role.lower()}", role, role.lower())
