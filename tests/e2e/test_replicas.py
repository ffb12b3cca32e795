"""Two `vendhub serve` replicas on one PostgreSQL and the real Mosquitto, default settings."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, _admin, free_port, unique
from tests.e2e.conftest import Api, Server, Sim, machine_name, prepare, server_env
from vendhub.adapters.db.engine import create_engine
from vendhub.config import normalise_database_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FINAL = {"COMPLETED", "FAILED", "REFUNDED", "EXPIRED", "CANCELLED"}
STOCK = 8  # seed_demo's units per slot


@pytest.fixture
def postgres_url() -> Iterator[str]:
    from sqlalchemy.engine import make_url

    name = unique("vendhub_e2e_")
    asyncio.run(_admin(PG_ADMIN_URL, f"CREATE DATABASE {name}"))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(PG_ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def pay(api: Api, machine_id: str, slot: int) -> str:
    created = api.post(
        "/api/orders", {"machine_id": machine_id, "slot_number": slot, "quantity": 1}, status=201
    )
    assert api.post(f"/api/payments/sandbox/{created['order_id']}/pay")["success"] is True
    return str(created["order_id"])


async def ledger(url: str) -> tuple[list[tuple[str, int, int]], dict[tuple[str, int], int]]:
    """Per order: (id, units, units dropped); per (machine, slot): counted stock."""
    engine = create_engine(normalise_database_url(url))
    try:
        async with engine.connect() as conn:
            units = (
                await conn.execute(
                    sa.text(
                        "SELECT order_id, count(*), "
                        "sum(CASE WHEN status = 'DROPPED' THEN 1 ELSE 0 END) "
                        "FROM dispenses GROUP BY order_id"
                    )
                )
            ).all()
            stock = (
                await conn.execute(
                    sa.text("SELECT machine_id, slot_number, current_stock FROM slots")
                )
            ).all()
    finally:
        await engine.dispose()
    return (
        [(str(o), int(n), int(d)) for o, n, d in units],
        {(str(m), int(s)): int(c) for m, s, c in stock},
    )


def connects(server: Server) -> list[str]:
    """Client ids of each 'MQTT connected … as ID' line in the replica's log."""
    return re.findall(r"MQTT connected to \S+ as (\S+);", server.log.read_text())


def test_two_replicas_complete_each_paid_order_once_and_losing_one_loses_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    machines = [machine_name("VMRa"), machine_name("VMRb")]
    base = server_env(postgres_url, machines[0])
    base.pop("MQTT_CLIENT_ID")  # the defaults are what is under test
    prepare(base, tmp_path, *machines)
    first = Server(base, tmp_path)
    second = Server({**base, "PORT": str(free_port())}, tmp_path)
    sim = Sim(base["MQTT_TOPIC_PREFIX"], machines, tmp_path)
    try:
        first.start()
        second.start()
        sim.start()
        apis = [Api(first.base_url), Api(second.base_url)]
        for api in apis:
            api.login()
        for machine_id in machines:
            apis[0].wait_online(machine_id)

        # Orders paid through either replica, on both machines.
        orders: list[str] = []
        expected: dict[tuple[str, int], int] = {}
        for n in range(8):
            machine_id, slot = machines[n % 2], 1 + n % 3
            orders.append(pay(apis[n % 2], machine_id, slot))
            expected[(machine_id, slot)] = expected.get((machine_id, slot), STOCK) - 1
        for order_id in orders:
            assert apis[1].order_when(order_id, FINAL, within=60)["status"] == "COMPLETED"

        # Each replica connected once, under its own id: no knocking each other off.
        ids = [connects(first), connects(second)]
        assert len(ids[0]) == 1 and len(ids[1]) == 1 and ids[0] != ids[1], ids

        # Orders paid through the first replica, which then dies without any shutdown.
        late: list[str] = []
        for n in range(4):
            machine_id, slot = machines[n % 2], 4 + n % 2
            late.append(pay(apis[0], machine_id, slot))
            expected[(machine_id, slot)] = expected.get((machine_id, slot), STOCK) - 1
        first.kill()
        for n in range(2):
            machine_id = machines[n % 2]
            late.append(pay(apis[1], machine_id, 6))
            expected[(machine_id, 6)] = expected.get((machine_id, 6), STOCK) - 1
        for order_id in late:
            done: dict[str, Any] = apis[1].order_when(order_id, FINAL, within=120)
            assert done["status"] == "COMPLETED", done
    finally:
        sim.stop()
        first.stop()
        second.stop()

    units, stock = asyncio.run(ledger(postgres_url))
    assert sorted(units) == sorted((order_id, 1, 1) for order_id in orders + late)
    for key, count in stock.items():
        assert count == expected.get(key, STOCK), key
