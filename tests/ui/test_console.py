"""The operator console in Chromium: sign-in, every page with data, role limits, live fleet."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.ui.conftest import DESKTOP, Fleet, new_page, shoot, sign_in

PAGES = ["machines", "products", "orders", "alerts", "refunds", "finance", "users"]


@pytest.fixture(scope="module")
def sales(fleet: Fleet) -> dict[str, str]:
    """One completed order on the good machine and one jammed (refunded) on the jam machine."""
    done = fleet.api.post("/api/orders", {"machine_id": fleet.good, "slot_number": 2}, status=201)
    jammed = fleet.api.post("/api/orders", {"machine_id": fleet.jam, "slot_number": 1}, status=201)
    for order in (done, jammed):
        fleet.api.post(f"/api/payments/sandbox/{order['order_id']}/pay")
    fleet.api.order_when(done["order_id"], {"COMPLETED"})
    fleet.api.order_when(jammed["order_id"], {"REFUNDED"})
    return {"done": done["order_id"], "jammed": jammed["order_id"]}


def make_user(fleet: Fleet, role: str) -> tuple[str, str]:
    name, password = f"{role.lower()}-{uuid.uuid4().hex[:6]}", "console-pass-123"
    fleet.api.post("/api/auth/users", {"username": name, "password": password, "role": role}, 201)
    return name, password


def test_a_console_page_redirects_to_sign_in_and_back_with_a_strict_httponly_cookie(
    desktop: Page, fleet: Fleet
) -> None:
    desktop.goto(f"{fleet.url}/console/orders?status=COMPLETED")
    expect(desktop).to_have_url(re.compile(r"/console/login\?next="))
    shoot(desktop, "console-login")
    desktop.fill("input[name=username]", "admin")
    desktop.fill("input[name=password]", "wrong-password")
    desktop.click("button[type=submit]")
    expect(desktop.get_by_role("alert")).to_contain_text("Wrong username or password")
    desktop.fill("input[name=username]", "admin")
    desktop.fill("input[name=password]", "admin123")
    desktop.click("button[type=submit]")
    expect(desktop).to_have_url(re.compile(r"/console/orders\?status=COMPLETED$"))
    [cookie] = [c for c in desktop.context.cookies() if c["name"] == "vendhub_session"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    desktop.get_by_role("button", name="Sign out").click()
    desktop.goto(f"{fleet.url}/console")
    expect(desktop).to_have_url(re.compile(r"/console/login"))


def test_every_console_page_renders_with_the_fleets_data(
    desktop: Page, fleet: Fleet, sales: dict[str, str]
) -> None:
    sign_in(desktop, fleet.url, "admin", "admin123")
    for machine_id in (fleet.good, fleet.jam):
        expect(desktop.get_by_test_id(f"machine-{machine_id}")).to_contain_text("ONLINE")
    expect(desktop.get_by_test_id("sales-chart").locator("rect.bar")).to_have_count(14)
    expect(desktop.get_by_test_id("sales-today")).not_to_have_text("Rp 0")
    shoot(desktop, "console-dashboard", full_page=True)

    desktop.goto(f"{fleet.url}/console/machines/{fleet.good}")
    expect(desktop.get_by_test_id("slot-6")).to_be_visible()
    expect(desktop.locator(".timeline")).to_contain_text("STATUS")
    shoot(desktop, "console-machine", full_page=True)

    desktop.goto(f"{fleet.url}/console/orders?status=COMPLETED")
    expect(desktop.get_by_test_id("order-row").first).to_be_visible()
    expect(desktop.get_by_text(sales["done"])).to_be_visible()
    csv = desktop.request.get(f"{fleet.url}/console/orders.csv?machine={fleet.good}")
    assert csv.ok and sales["done"] in csv.text()

    desktop.goto(f"{fleet.url}/console/orders/{sales['jammed']}")
    expect(desktop.locator("body")).to_contain_text("refund-")
    expect(desktop.locator("body")).to_contain_text("SUCCEEDED")
    shoot(desktop, "console-order", full_page=True)

    desktop.goto(f"{fleet.url}/console/alerts?machine={fleet.jam}")
    alert = desktop.get_by_test_id("alert").filter(has_text=sales["jammed"])
    expect(alert).to_contain_text("VEND_FAILED")
    expect(alert).to_contain_text(fleet.jam)
    expect(alert).to_contain_text("warning")
    shoot(desktop, "console-alerts", full_page=True)
    alert.get_by_test_id("ack").click()
    desktop.goto(f"{fleet.url}/console/alerts?machine={fleet.jam}&state=acknowledged")
    acked = desktop.get_by_test_id("alert").filter(has_text=sales["jammed"])
    expect(acked.get_by_test_id("acknowledged")).to_contain_text("admin")

    desktop.goto(f"{fleet.url}/console/finance")
    expect(desktop.get_by_test_id("finance-chart")).to_be_visible()
    expect(desktop.locator("body")).to_contain_text("Aqua 600ml")
    shoot(desktop, "console-finance", full_page=True)
    finance_csv = desktop.request.get(f"{fleet.url}/console/finance.csv")
    assert finance_csv.ok and finance_csv.text().startswith("day (Asia/Jakarta)")

    for name in PAGES:
        response = desktop.goto(f"{fleet.url}/console/{name}")
        assert response is not None and response.status == 200, name
        expect(desktop.locator("h1")).to_be_visible()
    admin_row = desktop.get_by_test_id("user-row").filter(
        has=desktop.get_by_role("cell", name="admin", exact=True)
    )
    expect(admin_row).to_be_visible()


def test_an_auditor_reads_but_cannot_refund_acknowledge_or_manage_users(
    browser: Browser, fleet: Fleet, sales: dict[str, str]
) -> None:
    name, password = make_user(fleet, "AUDITOR")
    context, page = new_page(browser, DESKTOP)
    try:
        sign_in(page, fleet.url, name, password)
        expect(page.locator("[data-nav=users]")).to_have_count(0)
        response = page.goto(f"{fleet.url}/console/users")
        assert response is not None and response.status == 403
        expect(page.get_by_test_id("forbidden")).to_be_visible()

        page.goto(f"{fleet.url}/console/orders/{sales['done']}")
        expect(page.get_by_test_id("manual-refund")).to_have_count(0)
        page.goto(f"{fleet.url}/console/alerts?state=all")
        expect(page.get_by_test_id("alert").first).to_be_visible()
        expect(page.get_by_test_id("ack")).to_have_count(0)

        # Posting the form by hand (with a valid CSRF token) is refused the same way.
        page.goto(f"{fleet.url}/console/machines/{fleet.good}")
        csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
        refused = page.request.post(
            f"{fleet.url}/console/orders/{sales['done']}/refund", form={"csrf": csrf}
        )
        assert refused.status == 403
    finally:
        context.close()


def test_forms_without_the_sessions_csrf_token_are_refused(desktop: Page, fleet: Fleet) -> None:
    sign_in(desktop, fleet.url, "admin", "admin123")
    before = fleet.api.get(f"/api/machines/{fleet.idle}")
    refused = desktop.request.post(
        f"{fleet.url}/console/machines/{fleet.idle}/selling", form={"csrf": "forged"}
    )
    assert refused.status == 403
    assert fleet.api.get(f"/api/machines/{fleet.idle}")["is_active"] == before["is_active"]


def test_an_inventory_operator_restocks_but_cannot_edit_the_planogram(
    browser: Browser, fleet: Fleet
) -> None:
    name, password = make_user(fleet, "INVENTORY")
    context, page = new_page(browser, DESKTOP)
    try:
        sign_in(page, fleet.url, name, password, f"/console/machines/{fleet.idle}")
        expect(page.get_by_test_id("fill-all")).to_be_visible()
        expect(page.get_by_test_id("slot-1").get_by_role("button", name="Save")).to_have_count(0)
        page.get_by_test_id("fill-all").click()
        expect(page.get_by_role("status")).to_contain_text("filled to capacity")
        slots = fleet.api.get(f"/api/machines/{fleet.idle}/slots")["data"]
        assert all(s["current_stock"] == s["capacity"] for s in slots)
    finally:
        context.close()


def test_the_dashboard_follows_presence_changes_without_a_reload(
    desktop: Page, fleet: Fleet
) -> None:
    fleet.publish_status(fleet.idle, "ONLINE")
    sign_in(desktop, fleet.url, "admin", "admin123")
    card = desktop.get_by_test_id(f"machine-{fleet.idle}")
    expect(card.locator("[data-field=status]")).to_have_text("ONLINE")
    desktop.evaluate("window.__notReloaded = true")
    fleet.publish_status(fleet.idle, "MAINTENANCE")
    expect(card.locator("[data-field=status]")).to_have_text("MAINTENANCE")
    fleet.publish_status(fleet.idle, "OFFLINE")
    expect(card.locator("[data-field=status]")).to_have_text("OFFLINE")
    assert desktop.evaluate("window.__notReloaded") is True
    fleet.publish_status(fleet.idle, "ONLINE")
    expect(card.locator("[data-field=status]")).to_have_text("ONLINE")
