"""The kiosk in Chromium: buy, pay on the sandbox page, follow the vend; jam → refund; expiry."""

from __future__ import annotations

import json

import httpx
from playwright.sync_api import Page, expect

from tests.ui.conftest import Fleet, shoot


def open_kiosk(page: Page, fleet: Fleet, machine_id: str, lang: str = "id") -> None:
    page.goto(f"{fleet.url}/kiosk/{machine_id}?lang={lang}")
    expect(page.get_by_test_id("product-1")).to_be_visible()


def checkout(page: Page) -> str:
    expect(page.get_by_test_id("checkout")).to_be_visible()
    page.get_by_test_id("checkout").click()
    expect(page.get_by_test_id("payment-qr").locator("svg")).to_be_visible()
    return page.get_by_test_id("order-id").inner_text().strip()


def test_a_purchase_of_three_units_is_paid_by_qr_and_ends_on_the_success_screen(
    kiosk: Page, fleet: Fleet
) -> None:
    open_kiosk(kiosk, fleet, fleet.good)
    expect(kiosk.get_by_test_id("checkout")).to_be_hidden()  # empty cart, nothing to pay
    kiosk.get_by_test_id("product-1").click()
    kiosk.get_by_test_id("product-1").click()
    kiosk.get_by_test_id("product-2").click()
    expect(kiosk.locator("#cart-total")).to_have_text("Rp 21.000")  # 2 × 8.000 + 5.000
    shoot(kiosk, "kiosk-portrait-cart")
    order_id = checkout(kiosk)
    expect(kiosk.locator(".k-amount")).to_have_text("Rp 21.000")
    shoot(kiosk, "kiosk-portrait-payment")

    order = fleet.api.get(f"/api/orders/{order_id}")
    assert order["total_amount"] == 21000
    assert sorted((i["slot_number"], i["quantity"]) for i in order["items"]) == [(1, 2), (2, 1)]
    assert order["status"] == "PENDING"

    # The customer's phone opens the QR's page (the sandbox wallet) and pays there.
    phone = kiosk.context.new_page()
    phone.set_viewport_size({"width": 420, "height": 860})
    phone.goto(f"{fleet.url}/api/payments/sandbox/{order_id}")
    phone.get_by_test_id("sandbox-pay").click()
    expect(kiosk.get_by_test_id("vend-success")).to_be_visible()
    shoot(kiosk, "kiosk-portrait-success")
    assert fleet.api.get(f"/api/orders/{order_id}")["status"] == "COMPLETED"

    # A completed order offers no "Pay" any more.
    phone.goto(f"{fleet.url}/api/payments/sandbox/{order_id}")
    expect(phone.get_by_test_id("not-payable")).to_be_visible()
    expect(phone.get_by_test_id("sandbox-pay")).to_have_count(0)


def test_a_jammed_vend_shows_the_refund_notice_with_the_amount(kiosk: Page, fleet: Fleet) -> None:
    open_kiosk(kiosk, fleet, fleet.jam, lang="en")
    kiosk.get_by_test_id("product-3").click()  # Indomie Goreng, Rp 4.500
    order_id = checkout(kiosk)
    fleet.api.post(f"/api/payments/sandbox/{order_id}/pay")
    refunded = kiosk.get_by_test_id("vend-refunded")
    expect(refunded).to_be_visible()
    expect(refunded.locator("#refund-amount")).to_have_text("Rp 4.500")
    expect(refunded).to_contain_text("could not be dispensed")
    shoot(kiosk, "kiosk-portrait-refunded")
    order = fleet.api.get(f"/api/orders/{order_id}")
    assert order["status"] in ("FAILED", "REFUNDED")
    assert [r["amount"] for r in order["refunds"]] == [4500]


def test_an_unpaid_order_that_expires_returns_the_kiosk_to_the_grid_with_stock_back(
    tablet: Page, fleet: Fleet
) -> None:
    open_kiosk(tablet, fleet, fleet.good, lang="en")
    tile = tablet.get_by_test_id("product-5")
    before = int(tile.get_attribute("data-available") or 0)
    tile.click()
    shoot(tablet, "kiosk-landscape-cart")
    order_id = checkout(tablet)
    shoot(tablet, "kiosk-landscape-payment")
    fleet.expire_now(order_id)
    closed = tablet.get_by_test_id("order-closed")
    expect(closed).to_be_visible()
    expect(closed).to_contain_text("Payment time is over")
    assert fleet.api.get(f"/api/orders/{order_id}")["status"] == "EXPIRED"
    closed.get_by_role("button").click()
    expect(tablet.get_by_test_id("product-5")).to_have_attribute("data-available", str(before))
    expect(tablet.get_by_test_id("checkout")).to_be_hidden()


def test_cancel_on_the_payment_screen_closes_the_order_on_the_server(
    kiosk: Page, fleet: Fleet
) -> None:
    open_kiosk(kiosk, fleet, fleet.good)
    kiosk.get_by_test_id("product-4").click()
    order_id = checkout(kiosk)
    kiosk.get_by_test_id("cancel").click()
    expect(kiosk.get_by_test_id("order-closed")).to_contain_text("Pesanan dibatalkan")
    assert fleet.api.get(f"/api/orders/{order_id}")["status"] == "CANCELLED"


def test_a_machine_out_of_service_shows_no_products(kiosk: Page, fleet: Fleet) -> None:
    fleet.publish_status(fleet.idle, "MAINTENANCE")
    fleet.api.wait(
        lambda: fleet.api.get(f"/api/machines/{fleet.idle}")["status"] == "MAINTENANCE", 20
    )
    kiosk.goto(f"{fleet.url}/kiosk/{fleet.idle}")
    expect(kiosk.get_by_test_id("out-of-service")).to_be_visible()
    expect(kiosk.get_by_test_id("product-1")).to_have_count(0)
    fleet.publish_status(fleet.idle, "ONLINE")


def test_the_public_order_stream_reveals_only_progress_and_refund_fields(fleet: Fleet) -> None:
    created = fleet.api.post(
        "/api/orders", {"machine_id": fleet.good, "slot_number": 6}, status=201
    )
    url = f"{fleet.url}/api/orders/{created['order_id']}/events"
    with httpx.stream("GET", url, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = next(line for line in response.iter_lines() if line.startswith("data:"))
    state = json.loads(data[len("data:") :])
    assert set(state) == {
        "order_id",
        "status",
        "units_total",
        "units_dropped",
        "units_failed",
        "refund_amount",
        "refunded_amount",
    }
    assert (state["status"], state["units_total"]) == ("PENDING", 1)
    fleet.api.post(f"/api/payments/cancel/{created['order_id']}")
    assert httpx.get(f"{fleet.url}/api/orders/NOPE/events", timeout=10).status_code == 404


def test_the_kiosk_shows_each_unit_as_the_machine_reports_it(kiosk: Page, fleet: Fleet) -> None:
    """No simulator answers for this machine: the test plays the device, one result at a time."""
    fleet.publish_status(fleet.idle, "ONLINE")
    fleet.api.wait(lambda: fleet.api.get(f"/api/machines/{fleet.idle}")["status"] == "ONLINE", 20)
    open_kiosk(kiosk, fleet, fleet.idle)
    kiosk.get_by_test_id("product-2").click()
    kiosk.get_by_test_id("product-2").click()
    order_id = checkout(kiosk)
    fleet.api.post(f"/api/payments/sandbox/{order_id}/pay")
    units = kiosk.locator("#progress-units")
    expect(units).to_have_text("1 dari 2")
    shoot(kiosk, "kiosk-portrait-dispensing")
    for shown_after in ("2 dari 2", None):
        command_id = in_flight_command(fleet, order_id)
        fleet.api.post(
            "/api/debug/mqtt/simulate-dispense-result",
            {"orderId": order_id, "slot": 2, "commandId": command_id},
        )
        if shown_after:
            expect(units).to_have_text(shown_after)
    expect(kiosk.get_by_test_id("vend-success")).to_be_visible()
    assert fleet.api.get(f"/api/orders/{order_id}")["status"] == "COMPLETED"


def in_flight_command(fleet: Fleet, order_id: str) -> str:
    """The commandId the server has sent for this order and awaits a result for."""
    found: list[str] = []

    def sent() -> bool:
        order = fleet.api.get(f"/api/orders/{order_id}")
        found[:] = [d["command_id"] for d in order["dispenses"] if d["status"] == "IN_FLIGHT"]
        return bool(found)

    fleet.api.wait(sent, 20)
    return found[0]
