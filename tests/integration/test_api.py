"""The HTTP API on every database, through the real app (ASGI, MQTT down, no workers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.integration.helpers import (
    JWT_SECRET,
    api_client,
    assert_error,
    bearer,
    count,
    outbox_rows,
    pay,
    quick_shop,
    rows,
    slot_row,
)
from vendhub.adapters.db.tables import payment_notifications, stock_logs
from vendhub.protocol.messages import Telemetry
from vendhub.services import auth, fleet
from vendhub.services.context import ServiceContext

pytestmark = pytest.mark.integration

COCA_COLA, AQUA = 8000, 5000


@dataclass
class Api:
    client: httpx.AsyncClient
    container: Any
    admin: dict[str, str]

    @property
    def ctx(self) -> ServiceContext:
        ctx: ServiceContext = self.container.ctx
        return ctx

    def as_role(self, role: str) -> dict[str, str]:
        return bearer(self.container, f"user-{role.lower()}", role, role.lower())

    async def order(self, slot: int = 1, quantity: int = 1) -> dict[str, Any]:
        response = await self.client.post(
            "/api/orders", json={"slot_number": slot, "quantity": quantity}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
async def api(engine: Any, backend: str, database_urls: dict[str, str]) -> AsyncIterator[Api]:
    async with api_client(database_urls[backend]) as (client, container):
        await quick_shop(container.ctx, stock=5)
        yield Api(client, container, bearer(container, "user-admin", "SUPER_ADMIN", "admin"))


# --- health, readiness, metrics -----------------------------------------------------------


async def test_health_ok_ready_503_while_mqtt_down_and_metrics_exposed(api: Api) -> None:
    health = await api.client.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await api.client.get("/ready")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "database": True, "mqtt": False}
    created = await api.order()
    await api.client.post(f"/api/payments/sandbox/{created['order_id']}/pay")
    metrics = await api.client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "vendhub_mqtt_connected 0.0" in metrics.text
    assert "vendhub_queue_depth" in metrics.text


# --- auth ---------------------------------------------------------------------------------


async def test_bootstrap_admin_logs_in_and_wrong_password_is_401(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> None:
    async with api_client(database_urls[backend], with_admin=False) as (client, _):
        response = await client.post(
            "/api/auth/login", json={"username": "admin", "password": "admin123"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user"]["role"] == "SUPER_ADMIN" and body["token_type"] == "bearer"
        me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['token']}"})
        assert me.status_code == 200
        assert me.json()["username"] == "admin" and me.json()["role"] == "SUPER_ADMIN"
        wrong = {"username": "admin", "password": "admin124"}
        assert_error(await client.post("/api/auth/login", json=wrong), 401, "unauthorized")
        nobody = {"username": "nobody", "password": "admin123"}
        assert_error(await client.post("/api/auth/login", json=nobody), 401, "unauthorized")
        assert_error(await client.post("/api/auth/login", json={"username": "admin"}), 422)


async def test_missing_garbage_foreign_or_expired_token_is_401(api: Api) -> None:
    other = auth.issue_token(
        {"id": "u", "username": "x", "role": "SUPER_ADMIN"},
        "another-secret-0123456789abcdef0123456789",
        api.ctx,
        5,
    )
    expired = auth.issue_token(
        {"id": "u", "username": "x", "role": "SUPER_ADMIN"},
        JWT_SECRET,
        SimpleNamespace(clock=lambda: datetime.now(UTC) - timedelta(days=1)),  # type: ignore[arg-type]
        5,
    )
    for headers in (
        {},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Basic YWRtaW46YWRtaW4xMjM="},
        {"Authorization": f"Bearer {other}"},
        {"Authorization": f"Bearer {expired}"},
    ):
        response = await api.client.get("/api/auth/me", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_error(await api.client.get("/api/machines"), 401)


async def test_auditor_created_by_admin_can_read_but_not_write(api: Api) -> None:
    new_user = {"username": "auditor1", "password": "auditor-pass", "role": "AUDITOR"}
    created = await api.client.post("/api/auth/users", json=new_user, headers=api.admin)
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "AUDITOR"
    again = await api.client.post("/api/auth/users", json=new_user, headers=api.admin)
    assert_error(again, 409)
    short = {**new_user, "username": "a2", "password": "short"}
    assert_error(await api.client.post("/api/auth/users", json=short, headers=api.admin), 422)
    login = await api.client.post(
        "/api/auth/login", json={"username": "auditor1", "password": "auditor-pass"}
    )
    assert login.status_code == 200
    auditor = {"Authorization": f"Bearer {login.json()['token']}"}
    assert (await api.client.get("/api/machines", headers=auditor)).status_code == 200
    product = {"name": "Sneaky", "price": 1}
    assert_error(
        await api.client.post("/api/products", json=product, headers=auditor), 403, "forbidden"
    )
    assert_error(await api.client.post("/api/auth/users", json=new_user, headers=auditor), 403)
    names = [p["name"] for p in (await api.client.get("/api/products")).json()["data"]]
    assert "Sneaky" not in names


# --- machines, slots, config --------------------------------------------------------------


async def test_machines_crud(api: Api) -> None:
    listed = await api.client.get("/api/machines", headers=api.admin)
    assert [m["id"] for m in listed.json()["data"]] == ["VM01"]
    body = {"id": "VM02", "name": "Second", "location": "Hall"}
    created = await api.client.post("/api/machines", json=body, headers=api.admin)
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "VM02" and created.json()["config_version"] == 0
    assert_error(await api.client.post("/api/machines", json=body, headers=api.admin), 409)
    bad_id = {"id": "bad id!", "name": "x"}
    assert_error(await api.client.post("/api/machines", json=bad_id, headers=api.admin), 422)
    extra = {**body, "id": "VM03", "owner": "me"}
    assert_error(await api.client.post("/api/machines", json=extra, headers=api.admin), 422)
    technician = api.as_role("TECHNICIAN")
    other = {"id": "VM04", "name": "x"}
    assert_error(await api.client.post("/api/machines", json=other, headers=technician), 403)
    got = await api.client.get("/api/machines/VM02", headers=api.admin)
    assert got.json()["location"] == "Hall"
    patch = {"name": "Renamed", "is_active": False}
    patched = await api.client.patch("/api/machines/VM02", json=patch, headers=api.admin)
    assert patched.status_code == 200
    assert (patched.json()["name"], patched.json()["is_active"]) == ("Renamed", False)
    assert_error(await api.client.get("/api/machines/NOPE", headers=api.admin), 404, "not_found")
    assert_error(await api.client.patch("/api/machines/NOPE", json=patch, headers=api.admin), 404)
    # An inactive machine takes no orders.
    order = {"machine_id": "VM02", "slot_number": 1}
    assert_error(await api.client.post("/api/orders", json=order), 409, "conflict")


async def test_slots_list_and_put(api: Api) -> None:
    listed = (await api.client.get("/api/machines/VM01/slots", headers=api.admin)).json()["data"]
    assert [s["slot_number"] for s in listed] == [1, 2, 3, 4, 5, 6]
    assert (listed[0]["price"], listed[0]["available"], listed[0]["reserved"]) == (COCA_COLA, 5, 0)
    product_id = listed[1]["product_id"]
    put = await api.client.put(
        "/api/machines/VM01/slots/7",
        json={"product_id": product_id, "capacity": 4, "price_override": 4000},
        headers=api.admin,
    )
    assert put.status_code == 200, put.text
    assert (put.json()["slot_number"], put.json()["price"], put.json()["current_stock"]) == (
        7,
        4000,
        0,
    )
    unknown_product = {"product_id": "NOPE"}
    response = await api.client.put(
        "/api/machines/VM01/slots/8", json=unknown_product, headers=api.admin
    )
    assert_error(response, 404)
    # Capacity below the counted stock (5) breaks a CHECK constraint: a conflict, never a 500.
    response = await api.client.put(
        "/api/machines/VM01/slots/1", json={"capacity": 2}, headers=api.admin
    )
    assert_error(response, 409)
    assert (await slot_row(api.ctx, 1))["capacity"] == 10
    assert_error(
        await api.client.put("/api/machines/VM01/slots/0", json={}, headers=api.admin), 422
    )
    assert_error(
        await api.client.put(
            "/api/machines/VM01/slots/1", json={"capacity": "3"}, headers=api.admin
        ),
        422,
    )
    assert_error(await api.client.get("/api/machines/NOPE/slots", headers=api.admin), 404)


async def test_config_push_queues_a_retained_versioned_config(api: Api) -> None:
    tech = api.as_role("TECHNICIAN")
    first = await api.client.post("/api/machines/VM01/config", headers=tech)
    assert first.status_code == 200, first.text
    config = first.json()["config"]
    assert (config["version"], config["machineId"]) == (1, "VM01")
    assert [s["slot"] for s in config["slots"]] == [1, 2, 3, 4, 5, 6]
    assert config["slots"][0] == {"slot": 1, "motorMs": 1500, "enabled": True}
    second = await api.client.post("/api/machines/VM01/config", headers=tech)
    assert second.json()["config"]["version"] == 2
    queued = await outbox_rows(api.ctx, "config")
    assert [(r["topic"], r["retain"], r["body"]["version"]) for r in queued] == [
        ("vm/VM01/config", True, 1),
        ("vm/VM01/config", True, 2),
    ]
    assert all(len(r["payload"]) < 256 for r in queued)
    machine = (await api.client.get("/api/machines/VM01", headers=tech)).json()
    assert machine["config_version"] == 2
    assert_error(await api.client.post("/api/machines/NOPE/config", headers=tech), 404)
    inventory = api.as_role("INVENTORY")
    assert_error(await api.client.post("/api/machines/VM01/config", headers=inventory), 403)


# --- products -----------------------------------------------------------------------------


async def test_products_public_available_and_by_id(api: Api) -> None:
    everything = (await api.client.get("/api/products")).json()["data"]
    assert len(everything) == 6 and all(p["is_active"] for p in everything)
    in_machine = (await api.client.get("/api/products", params={"machine_id": "VM01"})).json()[
        "data"
    ]
    assert [(p["slot_number"], p["available"]) for p in in_machine][:2] == [(1, 5), (2, 5)]
    # Sell slot 6 out (reserve all of it): it leaves the available list, not the full list.
    await api.order(slot=6, quantity=5)
    available = (await api.client.get("/api/products/available?machine_id=VM01")).json()["data"]
    assert [p["slot_number"] for p in available] == [1, 2, 3, 4, 5]
    default_machine = (await api.client.get("/api/products/available")).json()["data"]
    assert default_machine == available
    full = (await api.client.get("/api/products?machine_id=VM01")).json()["data"]
    assert [p["slot_number"] for p in full] == [1, 2, 3, 4, 5, 6]
    one = (await api.client.get(f"/api/products/{in_machine[0]['id']}")).json()
    assert (one["name"], one["price"]) == ("Coca Cola 330ml", COCA_COLA)
    assert_error(await api.client.get("/api/products/NOPE"), 404, "not_found")
    assert_error(await api.client.get("/api/products/available?machine_id=NOPE"), 404)


async def test_products_create_update_delete(api: Api) -> None:
    body = {"name": "Pocari Sweat", "price": 7000, "category": "drink"}
    created = await api.client.post("/api/products", json=body, headers=api.admin)
    assert created.status_code == 201, created.text
    product_id = created.json()["id"]
    updated = await api.client.put(
        f"/api/products/{product_id}", json={**body, "price": 7500}, headers=api.admin
    )
    assert updated.status_code == 200 and updated.json()["price"] == 7500
    deleted = await api.client.delete(f"/api/products/{product_id}", headers=api.admin)
    assert deleted.status_code == 204
    assert product_id not in [
        p["id"] for p in (await api.client.get("/api/products")).json()["data"]
    ]
    assert (await api.client.get(f"/api/products/{product_id}")).json()["is_active"] is False
    for invalid in (
        {"name": "x", "price": -1},
        {"name": "x", "price": "7000"},
        {"name": "x", "price": 1.5},
        {"name": "", "price": 1},
        {"price": 1},
        {"name": "x", "price": 1, "sku": "extra"},
    ):
        response = await api.client.post("/api/products", json=invalid, headers=api.admin)
        assert_error(response, 422, "validation_error")
    put_missing = await api.client.put("/api/products/NOPE", json=body, headers=api.admin)
    assert_error(put_missing, 404)
    assert_error(await api.client.delete("/api/products/NOPE", headers=api.admin), 404)
    assert_error(await api.client.post("/api/products", json=body), 401)


# --- orders -------------------------------------------------------------------------------


async def test_create_order_returns_201_with_payment_instructions(api: Api) -> None:
    body = await api.order(slot=2, quantity=2)
    assert body["status"] == "PENDING"
    assert body["order_id"].startswith("ORD-")
    assert body["total_amount"] == 2 * AQUA
    assert datetime.fromisoformat(body["expires_at"]) > datetime.fromisoformat(body["created_at"])
    [item] = body["items"]
    assert (item["slot_number"], item["quantity"], item["unit_price"], item["subtotal"]) == (
        2,
        2,
        AQUA,
        2 * AQUA,
    )
    payment = body["payment"]
    assert payment["provider"] == "sandbox"
    assert payment["redirect_url"].endswith(f"/api/payments/sandbox/{body['order_id']}")
    assert payment["qr_string"]
    assert (await slot_row(api.ctx, 2))["reserved"] == 2
    got = (await api.client.get(f"/api/orders/{body['order_id']}")).json()
    assert got["status"] == "PENDING" and got["dispenses"] == [] and got["refunds"] == []
    assert_error(await api.client.get("/api/orders/ORD-NOPE"), 404, "not_found")


async def test_create_order_by_slot_id_and_multi_order(api: Api) -> None:
    slot_id = (await slot_row(api.ctx, 3))["id"]
    by_id = await api.client.post("/api/orders", json={"slot_id": slot_id, "machine_id": "VM01"})
    assert by_id.status_code == 201 and by_id.json()["items"][0]["slot_number"] == 3
    multi = await api.client.post(
        "/api/orders/multi",
        json={"items": [{"slot_number": 1, "quantity": 2}, {"slot_number": 2}]},
    )
    assert multi.status_code == 201, multi.text
    body = multi.json()
    assert body["total_amount"] == 2 * COCA_COLA + AQUA
    assert sorted((i["slot_number"], i["quantity"]) for i in body["items"]) == [(1, 2), (2, 1)]
    short = {"items": [{"slot_number": 1}, {"slot_number": 2, "quantity": 6}]}
    assert_error(await api.client.post("/api/orders/multi", json=short), 409, "out_of_stock")
    assert (await slot_row(api.ctx, 1))["reserved"] == 2  # the refused order reserved nothing
    assert_error(await api.client.post("/api/orders/multi", json={"items": []}), 422)


async def test_list_orders_needs_a_token_and_filters(api: Api) -> None:
    first = await api.order(slot=1)
    second = await api.order(slot=2)
    await pay(api.ctx, first["order_id"], COCA_COLA)
    assert_error(await api.client.get("/api/orders"), 401)
    listed = (await api.client.get("/api/orders", headers=api.admin)).json()["data"]
    assert {o["order_id"] for o in listed} == {first["order_id"], second["order_id"]}
    pending = await api.client.get(
        "/api/orders", params={"status": "PENDING", "machine_id": "VM01"}, headers=api.admin
    )
    assert [o["order_id"] for o in pending.json()["data"]] == [second["order_id"]]
    limited = await api.client.get("/api/orders", params={"limit": 1}, headers=api.admin)
    assert (limited.json()["count"], limited.json()["next_offset"]) == (1, 1)
    bad = await api.client.get("/api/orders", params={"status": "WHATEVER"}, headers=api.admin)
    assert_error(bad, 422)
    assert_error(await api.client.get("/api/orders?limit=0", headers=api.admin), 422)


async def test_order_errors_unknown_machine_slot_and_out_of_stock(api: Api) -> None:
    unknown_machine = {"machine_id": "NOPE", "slot_number": 1}
    assert_error(await api.client.post("/api/orders", json=unknown_machine), 404, "not_found")
    assert_error(await api.client.post("/api/orders", json={"slot_number": 99}), 404)
    assert_error(await api.client.post("/api/orders", json={"slot_id": "NOPE"}), 404)
    too_many = {"slot_number": 1, "quantity": 6}
    assert_error(await api.client.post("/api/orders", json=too_many), 409, "out_of_stock")
    assert (await slot_row(api.ctx, 1))["reserved"] == 0


INVALID_ORDERS: list[Any] = [
    {"slot_number": 1, "quantity": 0},
    {"slot_number": 1, "quantity": -1},
    {"slot_number": 1, "quantity": 21},
    {"slot_number": 1, "quantity": 1.5},
    {"slot_number": 1, "quantity": "2"},
    {"slot_number": "1"},
    {"slot_number": 0},
    {"slot_number": 1, "slot_id": "x"},
    {},
    {"slot_number": 1, "extra": True},
    {"slot_number": 1, "payment_method": "cash"},
    {"slot_number": 1, "machine_id": 7},
    {"slot_number": True},
    [],
    [{"slot_number": 1}],
    "order",
    None,
    5,
]


async def test_invalid_order_bodies_are_422_with_error_shape_and_reserve_nothing(
    api: Api,
) -> None:
    for body in INVALID_ORDERS:
        response = await api.client.post("/api/orders", json=body)
        details = assert_error(response, 422, "validation_error")
        assert isinstance(details.get("details"), list), body
    for items in ([{"slot_number": "1"}], [{"quantity": 1}], [{"slot_number": 1, "x": 1}], "x"):
        response = await api.client.post("/api/orders/multi", json={"items": items})
        assert_error(response, 422, "validation_error")
    assert (await slot_row(api.ctx, 1))["reserved"] == 0


MALFORMED_BODIES = [b"{", b'{"slot_number": 1,}', b"\xff\xfe\x00", b"not json at all", b""]


async def test_malformed_json_bodies_are_422_never_500(api: Api) -> None:
    targets = [
        ("/api/orders", {}),
        ("/api/orders/multi", {}),
        ("/api/auth/login", {}),
        ("/api/products", api.admin),
        ("/api/machines", api.admin),
        ("/api/stock/update", api.admin),
        ("/api/dispense/trigger", api.admin),
        ("/api/auth/users", api.admin),
    ]
    for path, headers in targets:
        for content in MALFORMED_BODIES:
            response = await api.client.post(
                path, content=content, headers={**headers, "content-type": "application/json"}
            )
            assert_error(response, 422)
    assert await count(api.ctx, stock_logs) == 0


async def test_oversized_body_is_413_before_anything_is_read(api: Api) -> None:
    big = b'{"slot_number": 1, "pad": "' + b"x" * (64 * 1024) + b'"}'
    for path in ("/api/orders", "/api/payments/webhook", "/api/auth/login"):
        response = await api.client.post(
            path, content=big, headers={"content-type": "application/json"}
        )
        assert_error(response, 413, "payload_too_large")
    assert (await slot_row(api.ctx, 1))["reserved"] == 0


# --- payments -----------------------------------------------------------------------------


async def test_sandbox_pay_page_and_pay_button(api: Api) -> None:
    order_id = (await api.order())["order_id"]
    page = await api.client.get(f"/api/payments/sandbox/{order_id}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert order_id in page.text and f"/api/payments/sandbox/{order_id}/pay" in page.text
    status = (await api.client.get(f"/api/payments/{order_id}")).json()
    assert (status["status"], status["amount"], status["provider"]) == (
        "PENDING",
        COCA_COLA,
        "sandbox",
    )
    paid = await api.client.post(f"/api/payments/sandbox/{order_id}/pay")
    assert paid.status_code == 200 and paid.json()["outcome"] == "paid"
    again = await api.client.post(f"/api/payments/sandbox/{order_id}/pay")
    assert again.json()["outcome"] == "duplicate"
    order = (await api.client.get(f"/api/orders/{order_id}")).json()
    assert order["status"] == "PENDING_DISPENSE"  # the broker is down in this app
    assert order["payment_status"] == "PAID" and order["paid_at"] is not None
    assert len(order["dispenses"]) == 1
    assert (await api.client.get(f"/api/payments/{order_id}")).json()["status"] == "PAID"
    assert_error(await api.client.get("/api/payments/sandbox/ORD-NOPE"), 404)
    assert_error(await api.client.post("/api/payments/sandbox/ORD-NOPE/pay"), 404)
    assert_error(await api.client.get("/api/payments/ORD-NOPE"), 404)


# --- dispense -----------------------------------------------------------------------------


async def test_dispense_status_and_logs(api: Api) -> None:
    order_id = (await api.order(slot=1, quantity=2))["order_id"]
    await pay(api.ctx, order_id, 2 * COCA_COLA)
    status = (await api.client.get(f"/api/dispense/status/{order_id}")).json()
    assert status["order_id"] == order_id and status["status"] == "PENDING_DISPENSE"
    assert sorted(d["status"] for d in status["dispenses"]) == ["IN_FLIGHT", "QUEUED"]
    [command] = await outbox_rows(api.ctx, "dispense")
    assert command["body"]["commandId"] in [d["command_id"] for d in status["dispenses"]]
    assert_error(await api.client.get("/api/dispense/logs/VM01"), 401)
    logs = (await api.client.get("/api/dispense/logs/VM01", headers=api.admin)).json()["data"]
    assert sorted(log["command_id"] for log in logs) == sorted(
        d["command_id"] for d in status["dispenses"]
    )
    assert all(log["order_id"] == order_id for log in logs)
    assert_error(await api.client.get("/api/dispense/logs/NOPE", headers=api.admin), 404)
    assert_error(await api.client.get("/api/dispense/status/ORD-NOPE"), 404)
    auditor = api.as_role("AUDITOR")
    trigger = {"order_id": order_id}
    response = await api.client.post("/api/dispense/trigger", json=trigger, headers=auditor)
    assert_error(response, 403)


# --- stock --------------------------------------------------------------------------------


async def stock_update(api: Api, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return await api.client.post(
        "/api/stock/update",
        json={"machine_id": "VM01", "slot_number": 1, **body},
        headers=api.admin if headers is None else headers,
    )


async def test_stock_get_update_and_logs(api: Api) -> None:
    stock = (await api.client.get("/api/stock/VM01", headers=api.admin)).json()["data"]
    assert [(s["slot_number"], s["current_stock"], s["available"]) for s in stock][:1] == [
        (1, 5, 5)
    ]
    restock = await stock_update(api, change_type="RESTOCK", quantity_change=3, reason="van")
    assert restock.status_code == 200, restock.text
    assert (restock.json()["stock_before"], restock.json()["current_stock"]) == (5, 8)
    audit = await stock_update(
        api, api.as_role("INVENTORY"), change_type="AUDIT", new_stock=6, reason="count"
    )
    assert audit.status_code == 200 and audit.json()["current_stock"] == 6
    logs = (await api.client.get("/api/stock/logs/VM01", headers=api.admin)).json()["data"]
    assert [(log["change_type"], log["quantity_change"], log["stock_after"]) for log in logs] == [
        ("AUDIT", -2, 6),
        ("RESTOCK", 3, 8),
    ]
    assert logs[1]["user_id"] == "user-admin"
    assert_error(await api.client.get("/api/stock/NOPE", headers=api.admin), 404)
    assert_error(await api.client.get("/api/stock/logs/NOPE", headers=api.admin), 404)
    assert_error(await api.client.get("/api/stock/VM01"), 401)


async def test_stock_updates_that_break_a_rule_are_422_and_change_nothing(api: Api) -> None:
    await api.order(slot=1, quantity=2)  # 2 of 5 reserved
    refused = [
        {"change_type": "RESTOCK", "quantity_change": 6},  # 11 > capacity 10
        {"change_type": "AUDIT", "new_stock": 1},  # below the 2 reserved
        {"change_type": "MANUAL_ADJUST", "quantity_change": -4},  # below the 2 reserved
        {"change_type": "DISPENSE", "quantity_change": -1},  # only the system dispenses
        {"change_type": "RELEASE", "quantity_change": 0},
        {"change_type": "RESTOCK", "quantity_change": 1, "new_stock": 6},
        {"change_type": "RESTOCK"},
    ]
    for body in refused:
        assert_error(await stock_update(api, **body), 422)
    for body in (
        {"change_type": "STEAL", "quantity_change": 1},
        {"change_type": "RESTOCK", "quantity_change": "1"},
        {"change_type": "RESTOCK", "new_stock": -1},
        {"change_type": "RESTOCK", "quantity_change": 1, "slot_number": 0},
    ):
        assert_error(await stock_update(api, **body), 422, "validation_error")
    missing = await stock_update(api, change_type="RESTOCK", quantity_change=1, slot_number=99)
    assert_error(missing, 404)
    tech = api.as_role("TECHNICIAN")
    assert_error(await stock_update(api, tech, change_type="RESTOCK", quantity_change=1), 403)
    slot = await slot_row(api.ctx, 1)
    assert (slot["current_stock"], slot["reserved"]) == (5, 2)
    assert await count(api.ctx, stock_logs) == 0


# --- telemetry ----------------------------------------------------------------------------


async def test_telemetry_series_and_latest(api: Api) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    readings = [
        fleet.TelemetryReading("VM01", now - timedelta(minutes=10), Telemetry(temperature=5.0), {}),
        fleet.TelemetryReading(
            "VM01",
            now,
            Telemetry.from_raw({"temp": 4.5, "slots": [{"id": 1, "level": "LOW"}]}),
            {"temp": 4.5, "slots": [{"id": 1, "level": "LOW"}]},
        ),
        fleet.TelemetryReading("GHOST", now, Telemetry(temperature=1.0), {}),
    ]
    assert await fleet.store_telemetry(api.ctx, readings) == 2
    series = (await api.client.get("/api/telemetry/VM01", headers=api.admin)).json()["data"]
    assert [r["temperature"] for r in series] == [4.5, 5.0]
    assert series[0]["payload"] == {"temp": 4.5, "slots": [{"id": 1, "level": "LOW"}]}
    since = (now - timedelta(minutes=1)).isoformat()
    recent = await api.client.get("/api/telemetry/VM01", params={"since": since}, headers=api.admin)
    assert [r["temperature"] for r in recent.json()["data"]] == [4.5]
    latest = (await api.client.get("/api/telemetry/VM01/latest", headers=api.admin)).json()
    assert latest["temperature"] == 4.5
    # Sensed level recorded; counted stock untouched.
    slot = await slot_row(api.ctx, 1)
    assert (slot["sensed_level"], slot["current_stock"]) == ("LOW", 5)
    naive = {"since": "2026-11-27T00:00:00"}
    assert_error(await api.client.get("/api/telemetry/VM01", params=naive, headers=api.admin), 422)
    garbage = {"since": "yesterday"}
    response = await api.client.get("/api/telemetry/VM01", params=garbage, headers=api.admin)
    assert_error(response, 422)
    await api.client.post("/api/machines", json={"id": "VM02", "name": "x"}, headers=api.admin)
    assert_error(await api.client.get("/api/telemetry/VM02/latest", headers=api.admin), 404)
    assert_error(await api.client.get("/api/telemetry/NOPE", headers=api.admin), 404)
    assert_error(await api.client.get("/api/telemetry/VM01"), 401)


# --- debug --------------------------------------------------------------------------------


async def test_debug_mqtt_status_and_update_payment_through_the_signed_path(api: Api) -> None:
    status = await api.client.get("/api/debug/mqtt/status")
    assert status.status_code == 200
    body = status.json()
    assert body["success"] is True
    assert {"connected", "broker", "machineId"} <= set(body["mqtt"])
    assert (body["mqtt"]["connected"], body["mqtt"]["machineId"]) == (False, "VM01")
    assert body["mqtt"]["broker"] == "mqtt://127.0.0.1:1"

    order_id = (await api.order())["order_id"]
    pending = await api.client.post(
        f"/api/debug/update-payment/{order_id}", json={"status": "PENDING"}
    )
    assert pending.json()["outcome"] == "pending"
    paid = await api.client.post(
        f"/api/debug/update-payment/{order_id}", json={"status": "SUCCESS"}
    )
    assert paid.status_code == 200 and paid.json()["outcome"] == "paid"
    assert (await api.client.get(f"/api/orders/{order_id}")).json()["status"] == "PENDING_DISPENSE"
    stored = await rows(api.ctx, payment_notifications)
    assert [n["transaction_status"] for n in stored] == ["pending", "settlement"]
    assert len(await outbox_rows(api.ctx, "dispense")) == 1
    bad = await api.client.post(f"/api/debug/update-payment/{order_id}", json={"status": "RICH"})
    assert_error(bad, 422)
    missing = await api.client.post("/api/debug/update-payment/ORD-NOPE", json={"status": "PAID"})
    assert_error(missing, 404)


async def test_debug_publishing_while_broker_is_down_is_503_not_500(api: Api) -> None:
    order_id = (await api.order())["order_id"]
    response = await api.client.post("/api/debug/mqtt/test-command", json={})
    assert_error(response, 503)
    result = {"orderId": order_id, "slot": 1}
    response = await api.client.post("/api/debug/mqtt/simulate-dispense-result", json=result)
    assert_error(response, 503)
    assert await outbox_rows(api.ctx) == []


async def test_debug_endpoints_are_404_when_disabled(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> None:
    async with api_client(database_urls[backend], debug_endpoints=False) as (client, container):
        await quick_shop(container.ctx, stock=1)
        created = await client.post("/api/orders", json={"slot_number": 1})
        order_id = created.json()["order_id"]
        requests = [
            client.get("/api/debug/mqtt/status"),
            client.post("/api/debug/mqtt/test-command", json={}),
            client.post(
                "/api/debug/mqtt/simulate-dispense-result", json={"orderId": order_id, "slot": 1}
            ),
            client.post(f"/api/debug/update-payment/{order_id}", json={"status": "SUCCESS"}),
        ]
        for response in await asyncio.gather(*requests):
            assert_error(response, 404, "not_found")
        assert (await client.get(f"/api/orders/{order_id}")).json()["status"] == "PENDING"
