"""Orders over HTTP against the real `vendhub serve`, dispensed by simulated machines."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_ADMIN_URL, _admin, unique
from tests.e2e.conftest import Api, Server, Shop, Sim, machine_name, prepare, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

FINAL = {"COMPLETED", "FAILED", "REFUNDED", "EXPIRED", "CANCELLED"}


def buy(api: Api, machine_id: str, slot: int, quantity: int = 1) -> dict[str, Any]:
    created = api.post(
        "/api/orders",
        {"machine_id": machine_id, "slot_number": slot, "quantity": quantity},
        status=201,
    )
    assert created["status"] == "PENDING"
    paid = api.post(f"/api/payments/sandbox/{created['order_id']}/pay")
    assert paid["success"] is True
    return created


def test_a_paid_order_completes_and_takes_exactly_one_unit_from_stock(shop: Shop) -> None:
    api = shop.api
    before = api.stock(shop.machine_id)[1]
    created = buy(api, shop.machine_id, slot=1)
    done = api.order_when(created["order_id"], FINAL)
    assert done["status"] == "COMPLETED"
    [unit] = done["dispenses"]
    assert (unit["status"], unit["slot_number"], unit["success"], unit["drop_detected"]) == (
        "DROPPED",
        1,
        True,
        True,
    )
    assert done["refunds"] == [] and done["dispensed_at"] is not None
    after = api.stock(shop.machine_id)[1]
    assert after["current_stock"] == before["current_stock"] - 1
    assert after["reserved"] == before["reserved"] == 0


def test_a_multi_item_order_drops_every_unit_and_decrements_each_slot(shop: Shop) -> None:
    api = shop.api
    before = api.stock(shop.machine_id)
    created = api.post(
        "/api/orders/multi",
        {
            "machine_id": shop.machine_id,
            "items": [{"slot_number": 2, "quantity": 2}, {"slot_number": 3, "quantity": 1}],
        },
        status=201,
    )
    api.post(f"/api/payments/sandbox/{created['order_id']}/pay")
    done = api.order_when(created["order_id"], FINAL)
    assert done["status"] == "COMPLETED"
    assert sorted(u["slot_number"] for u in done["dispenses"]) == [2, 2, 3]
    assert {u["status"] for u in done["dispenses"]} == {"DROPPED"}
    assert len({u["command_id"] for u in done["dispenses"]}) == 3
    after = api.stock(shop.machine_id)
    assert after[2]["current_stock"] == before[2]["current_stock"] - 2
    assert after[3]["current_stock"] == before[3]["current_stock"] - 1
    assert (after[2]["reserved"], after[3]["reserved"]) == (0, 0)


def test_a_jammed_machine_fails_the_order_and_owes_a_refund(shop: Shop) -> None:
    api = shop.api
    before = api.stock(shop.jam_machine_id)[4]
    created = buy(api, shop.jam_machine_id, slot=4)
    # FAILED first, then REFUNDED once the payment jobs paid the refund (the sandbox pays).
    done = api.order_when(created["order_id"], {"REFUNDED", "COMPLETED"})
    assert done["status"] == "REFUNDED"
    [unit] = done["dispenses"]
    assert (unit["status"], unit["error_message"]) == ("FAILED", "JAM")
    [refund] = done["refunds"]
    assert (refund["dispense_id"], refund["status"]) == (unit["command_id"], "SUCCEEDED")
    assert refund["amount"] == created["total_amount"]
    after = api.stock(shop.jam_machine_id)[4]
    # Nothing dropped: counted stock unchanged and the reservation released.
    assert (after["current_stock"], after["reserved"]) == (before["current_stock"], 0)


@pytest.fixture
def lone_server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """A server of its own (SQLite), for tests that kill or stop it."""
    machine_id = machine_name("VMKx")
    env = server_env(f"sqlite:///{tmp_path / 'lone.db'}", machine_id)
    prepare(env, tmp_path, machine_id)
    server = Server(env, tmp_path)
    try:
        yield server, machine_id
    finally:
        server.stop()


def test_an_order_in_flight_survives_kill_9_and_completes_with_the_same_command_id(
    lone_server: tuple[Server, str], tmp_path: Path
) -> None:
    server, machine_id = lone_server
    sim = Sim(server.env["MQTT_TOPIC_PREFIX"], [machine_id], tmp_path)
    server.start()
    api = Api(server.base_url)
    api.login()
    try:
        # The machine connects once (a persistent session), then goes away: the command
        # waits in the broker and no result can arrive before the server dies.
        sim.start()
        api.wait_online(machine_id)
        sim.stop()
        created = buy(api, machine_id, slot=1)
        sent: dict[str, Any] = {}

        def command_sent() -> bool:
            sent.update(api.get(f"/api/orders/{created['order_id']}"))
            units = sent["dispenses"]
            return bool(units) and units[0]["command_sent_at"] is not None

        api.wait(command_sent, 20, lambda: str(sent))
        assert sent["status"] == "DISPENSING"
        command_id = sent["dispenses"][0]["command_id"]

        server.kill()
        server.start()
        sim.start()
        done = api.order_when(created["order_id"], FINAL)
        assert done["status"] == "COMPLETED"
        [unit] = done["dispenses"]
        assert unit["command_id"] == command_id
        assert unit["status"] == "DROPPED"
        api.login()
        stock = api.stock(machine_id)[1]
        assert (stock["current_stock"], stock["reserved"]) == (7, 0)
    finally:
        sim.stop()


def test_sigterm_stops_the_server_cleanly(lone_server: tuple[Server, str]) -> None:
    server, _ = lone_server
    server.start()
    try:
        code = server.terminate(within=20)
    except subprocess.TimeoutExpired:
        pytest.fail("vendhub serve did not exit within 20 s of SIGTERM")
    assert code == 0
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log


@pytest.fixture
def postgres_url() -> Iterator[str]:
    import asyncio

    from sqlalchemy.engine import make_url

    name = unique("vendhub_e2e_")
    try:
        asyncio.run(_admin(PG_ADMIN_URL, f"CREATE DATABASE {name}"))
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL not available: {exc}")
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(PG_ADMIN_URL, f"DROP DATABASE IF EXISTS {name}"))


def test_a_paid_order_completes_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    machine_id = machine_name("VMPx")
    env = server_env(postgres_url, machine_id)
    prepare(env, tmp_path, machine_id)
    server = Server(env, tmp_path)
    sim = Sim(env["MQTT_TOPIC_PREFIX"], [machine_id], tmp_path)
    try:
        server.start()
        sim.start()
        api = Api(server.base_url)
        api.login()
        api.wait_online(machine_id)
        created = buy(api, machine_id, slot=5)
        done = api.order_when(created["order_id"], FINAL)
        assert done["status"] == "COMPLETED"
        assert api.stock(machine_id)[5]["current_stock"] == 7
    finally:
        sim.stop()
        server.stop()
