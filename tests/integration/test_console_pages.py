"""Console and kiosk pages over ASGI on every database: sign-in, CSRF, roles, queries, /docs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from tests.integration.helpers import add_user, api_client, outbox_rows, pay, quick_shop, report
from vendhub.adapters.db.tables import refunds as refunds_table
from vendhub.protocol.messages import StatusMessage
from vendhub.services import alerts, auth, catalog, fleet, overview, refunds
from vendhub.services.alerts import Severity
from vendhub.services.checkout import checkout
from vendhub.services.orders import OrderLine

pytestmark = pytest.mark.integration
PAGES = ["", "/machines", "/machines/VM01", "/products", "/orders", "/alerts", "/refunds",
         "/finance", "/users", "/orders.csv", "/finance.csv"]  # fmt: skip


@pytest.fixture
async def site(
    engine: Any, backend: str, database_urls: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with api_client(database_urls[backend]) as (http, container):
        await quick_shop(container.ctx, stock=5)
        yield http, container


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    form = await http.get("/console/login")
    return await http.post(
        "/console/login",
        data={"username": username, "password": password, "csrf": csrf_of(form.text)},
    )


async def test_console_pages_redirect_to_sign_in_until_a_session_cookie_is_set(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, _ = site
    assert (await http.get("/api/fleet/events")).status_code == 401  # the fleet stream too
    away = await http.get("/console/orders?status=PAID")
    assert away.status_code == 303
    assert away.headers["location"] == "/console/login?next=/console/orders%3Fstatus%3DPAID"
    no_csrf = await http.post("/console/login", data={"username": "admin", "password": "admin123"})
    assert no_csrf.status_code == 401 and "vendhub_session" not in no_csrf.cookies
    wrong = await sign_in(http, "admin", "nope-nope")
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
    signed = await sign_in(http, "admin", "admin123")
    assert signed.status_code == 303 and signed.headers["location"] == "/console"
    cookie = signed.headers["set-cookie"]
    assert "vendhub_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert (await http.get("/console")).status_code == 200


async def test_a_login_never_redirects_off_site(site: tuple[httpx.AsyncClient, Any]) -> None:
    http, _ = site
    form = await http.get("/console/login?next=https://evil.example/")
    assert 'value="/console"' in form.text
    response = await http.post(
        "/console/login",
        data={
            "username": "admin",
            "password": "admin123",
            "csrf": csrf_of(form.text),
            "next": "//evil.example/console",
        },
    )
    assert response.headers["location"] == "/console"


async def test_every_console_page_renders_on_this_database_with_sales_in_it(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = site
    ctx = container.ctx
    order_id = await checkout(
        ctx, container.payments, "VM01", [OrderLine(slot_number=1, quantity=2)],
        customer_phone=None, payment_method=None,
    )  # fmt: skip
    await pay(ctx, order_id, 16000)
    await sign_in(http, "admin", "admin123")
    for path in PAGES:
        response = await http.get(f"/console{path}")
        assert response.status_code == 200, (path, response.text[:300])
    dashboard = (await http.get("/console")).text
    assert 'data-testid="machine-VM01"' in dashboard and 'data-testid="sales-chart"' in dashboard
    assert "Rp 16.000" in dashboard
    orders = (await http.get("/console/orders?status=PENDING_DISPENSE&machine=VM01")).text
    assert order_id in orders
    assert order_id not in (await http.get("/console/orders?status=COMPLETED")).text
    assert order_id in (await http.get("/console/orders.csv")).text
    detail = await http.get(f"/console/orders/{order_id}")
    assert detail.status_code == 200 and "Coca Cola" in detail.text


async def test_forms_need_the_sessions_csrf_token_and_the_role_the_api_needs(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = site
    await add_user(container.ctx, "audrey", "audit-pass-1", "AUDITOR")
    await sign_in(http, "audrey", "audit-pass-1")
    page = await http.get("/console/machines/VM01")
    token = csrf_of(page.text)
    assert (await http.get("/console/users")).status_code == 403
    refused = await http.post("/console/machines/VM01/fill", data={"csrf": token})
    assert refused.status_code == 403
    http.cookies.clear()
    await sign_in(http, "admin", "admin123")
    forged = await http.post("/console/machines/VM01/fill", data={"csrf": token})
    assert forged.status_code == 403  # another session's token
    good = csrf_of((await http.get("/console/machines/VM01")).text)
    filled = await http.post("/console/machines/VM01/fill", data={"csrf": good})
    assert filled.status_code == 303 and "ok=" in filled.headers["location"]
    slots = (await http.get("/api/stock/VM01", headers=await _bearer(http))).json()["data"]
    assert all(s["current_stock"] == s["capacity"] for s in slots)


async def _bearer(http: httpx.AsyncClient) -> dict[str, str]:
    token = (
        await http.post("/api/auth/login", json={"username": "admin", "password": "admin123"})
    ).json()["token"]
    return {"Authorization": f"Bearer {token}"}


async def test_sales_days_follow_the_display_time_zone(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    _, container = site
    ctx = container.ctx
    order_id = await checkout(
        ctx, container.payments, "VM01", [OrderLine(slot_number=2)],
        customer_phone=None, payment_method=None,
    )  # fmt: skip
    # 18:30 UTC on the 26th is already the 27th in Jakarta (UTC+7).
    ctx.clock = lambda: datetime(2026, 11, 26, 18, 30, tzinfo=UTC)
    await pay(ctx, order_id, 5000)
    jakarta = ZoneInfo("Asia/Jakarta")
    days = await overview.sales_by_day(ctx, jakarta, date(2026, 11, 26), date(2026, 11, 27), None)
    assert [(d.day.day, d.orders, d.gross) for d in days] == [(26, 0, 0), (27, 1, 5000)]
    utc = await overview.sales_by_day(
        ctx, ZoneInfo("UTC"), date(2026, 11, 26), date(2026, 11, 27), None
    )
    assert [(d.day.day, d.gross) for d in utc] == [(26, 5000), (27, 0)]


async def test_the_kiosk_and_docs_work_without_any_outside_asset(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, _ = site
    for path in ("/kiosk/VM01", "/kiosk/VM01?lang=en", "/docs", "/console/login"):
        html = (await http.get(path)).text
        for src in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert not src.startswith(("http:", "https:", "//")), (path, src)
    docs = (await http.get("/docs")).text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs
    assert (await http.get("/static-offline-docs/swagger-ui-bundle.js")).status_code == 200
    assert "Pilih minuman" in (await http.get("/kiosk/VM01")).text
    assert "Pick a drink" in (await http.get("/kiosk/VM01?lang=en")).text
    assert (await http.get("/kiosk/NOPE")).status_code == 404


async def test_kiosk_checkout_refuses_hostile_carts_and_changes_nothing(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = site
    for body in ({"items": []}, {"items": [{"slot_number": 0, "quantity": 1}]},
                 {"items": [{"slot_number": 1, "quantity": 999}]}, {"items": "x"}):  # fmt: skip
        response = await http.post("/kiosk/VM01/orders", json=body)
        assert response.status_code == 422, body
    too_many = await http.post(
        "/kiosk/VM01/orders", json={"items": [{"slot_number": 1, "quantity": 6}]}
    )
    assert too_many.status_code == 409
    _rows, total = await overview.order_page(container.ctx, overview.OrderQuery(), 10, 0)
    assert total == 0
    made = await http.post(
        "/kiosk/VM01/orders", json={"items": [{"slot_number": 1, "quantity": 2}]}
    )
    assert made.status_code == 200
    body = made.json()
    assert body["total_amount"] == 16000 and 'data-testid="payment-qr"' in body["html"]
    assert "<svg" in body["html"] and "Rp 16.000" in body["html"]


async def test_the_sandbox_pay_page_shows_a_qr_and_offers_pay_only_while_payable(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, _ = site
    made = (await http.post("/api/orders", json={"slot_number": 3})).json()
    order_id, token = made["order_id"], {"X-Order-Token": made["access_token"]}
    page = (await http.get(f"/api/payments/sandbox/{order_id}")).text
    assert 'data-testid="payment-qr"' in page and "<svg" in page and "Rp 4.500" in page
    assert 'data-testid="sandbox-pay"' in page
    assert (await http.post(f"/api/payments/cancel/{order_id}", headers=token)).status_code == 200
    closed = (await http.get(f"/api/payments/sandbox/{order_id}")).text
    assert 'data-testid="sandbox-pay"' not in closed and "CANCELLED" in closed
    # The button's form post comes back to the page; API clients still get JSON.
    other = (await http.post("/api/orders", json={"slot_number": 3})).json()["order_id"]
    paid = await http.post(
        f"/api/payments/sandbox/{other}/pay",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert paid.status_code == 303
    assert paid.headers["location"] == f"/api/payments/sandbox/{other}"
    assert 'data-testid="sandbox-pay"' not in (await http.get(paid.headers["location"])).text


async def test_retry_now_pays_out_a_failed_refund_once(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = site
    ctx = container.ctx
    ctx.mqtt_connected = lambda: True
    order_id = await checkout(
        ctx, container.payments, "VM01", [OrderLine(slot_number=3)],
        customer_phone=None, payment_method=None,
    )  # fmt: skip
    await pay(ctx, order_id, 4500)
    [command] = [r["body"] for r in await outbox_rows(ctx, "dispense")]
    await report(ctx, command, dropped=False, error="MOTOR_JAM")
    # As if the gateway had refused it REFUND_MAX_ATTEMPTS times.
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.update(refunds_table).values(status="FAILED", attempts=5, next_attempt_at=None)
        )
    await sign_in(http, "admin", "admin123")
    page = await http.get("/console/refunds")
    assert order_id in page.text and "Retry now" in page.text
    [owed] = await refunds.owed(ctx)
    retried = await http.post(
        f"/console/refunds/{owed['id']}/retry", data={"csrf": csrf_of(page.text)}
    )
    assert retried.status_code == 303 and "ok=" in retried.headers["location"]
    order = (await http.get(f"/api/orders/{order_id}", headers=await _bearer(http))).json()
    assert order["status"] == "REFUNDED" and order["refunded_amount"] == 4500
    assert [r["status"] for r in order["refunds"]] == ["SUCCEEDED"]
    again = await http.post(
        f"/console/refunds/{owed['id']}/retry", data={"csrf": csrf_of(page.text)}
    )
    assert "err=" in again.headers["location"]
    assert (await http.get(f"/api/orders/{order_id}")).json()["refunded_amount"] == 4500


async def test_admins_manage_users_but_not_super_admins_nor_themselves(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = site
    boss_id = await add_user(container.ctx, "boss", "boss-pass-12", "ADMIN")
    await sign_in(http, "boss", "boss-pass-12")
    token = csrf_of((await http.get("/console/users")).text)
    made = await http.post(
        "/console/users",
        data={"csrf": token, "username": "tech1", "password": "tech-pass-1", "role": "TECHNICIAN"},
    )
    assert "ok=" in made.headers["location"]
    escalate = await http.post(
        "/console/users",
        data={"csrf": token, "username": "root2", "password": "root-pass-1", "role": "SUPER_ADMIN"},
    )
    assert "err=" in escalate.headers["location"]
    users = {u["username"]: u for u in await auth.list_users(container.ctx)}
    assert "root2" not in users and users["tech1"]["role"] == "TECHNICIAN"
    tech = users["tech1"]["id"]
    await http.post(f"/console/users/{tech}/role", data={"csrf": token, "role": "INVENTORY"})
    refused = await http.post(f"/console/users/{users['admin']['id']}/active", data={"csrf": token})
    assert "err=" in refused.headers["location"]  # the SUPER_ADMIN is out of an ADMIN's reach
    mine = await http.post(
        f"/console/users/{boss_id}/role", data={"csrf": token, "role": "AUDITOR"}
    )
    assert "err=" in mine.headers["location"]
    await http.post(f"/console/users/{tech}/active", data={"csrf": token})  # deactivate
    users = {u["username"]: u for u in await auth.list_users(container.ctx)}
    assert users["tech1"]["role"] == "INVENTORY" and not users["tech1"]["is_active"]
    assert users["admin"]["is_active"] and users["boss"]["role"] == "ADMIN"
    http.cookies.clear()
    assert (await sign_in(http, "tech1", "tech-pass-1")).status_code == 401


async def test_hostile_names_and_messages_are_escaped_on_every_page(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = site
    ctx = container.ctx
    evil = '<img src=x onerror="alert(1)">'
    product = await catalog.save_product(ctx, {"name": evil, "price": 1000, "category": evil})
    await catalog.upsert_slot(ctx, "VM01", 1, {"product_id": product.id})
    async with ctx.engine.begin() as conn:
        await alerts.record(
            conn, machine_id="VM01", kind="X", message=evil, severity=Severity.WARNING,
            now=ctx.clock(),
        )  # fmt: skip
    await sign_in(http, "admin", "admin123")
    for path in ("/kiosk/VM01", "/console/products", "/console/alerts", "/console/machines/VM01"):
        page = (await http.get(path)).text
        assert evil not in page, path
        assert "&lt;img src=x" in page, path


async def test_a_machine_in_maintenance_or_out_of_service_sells_nothing_at_the_kiosk(
    site: tuple[httpx.AsyncClient, Any],
) -> None:
    http, container = site
    cart = {"items": [{"slot_number": 1, "quantity": 1}]}
    await fleet.apply_status(container.ctx, "VM01", StatusMessage(status="MAINTENANCE"))
    assert 'data-testid="out-of-service"' in (await http.get("/kiosk/VM01")).text
    assert (await http.post("/kiosk/VM01/orders", json=cart)).status_code == 409
    await fleet.apply_status(container.ctx, "VM01", StatusMessage(status="ONLINE"))
    assert 'data-testid="product-1"' in (await http.get("/kiosk/VM01")).text
    await catalog.update_machine(container.ctx, "VM01", {"is_active": False})
    assert 'data-testid="out-of-service"' in (await http.get("/kiosk/VM01")).text
    assert (await http.post("/kiosk/VM01/orders", json=cart)).status_code == 409
    _rows, total = await overview.order_page(container.ctx, overview.OrderQuery(), 10, 0)
    assert total == 0
