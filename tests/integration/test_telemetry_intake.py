"""Telemetry robustness: one bad reading costs only itself; a machine that speaks is present."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import FakeClock, unique
from tests.integration.helpers import order, order_status, outbox_rows, pay, quick_shop, rows
from tests.integration.test_mqtt_intake import device, eventually, fetch, invalid, running
from vendhub.adapters.db.tables import machine_events, machines, slots, telemetry
from vendhub.adapters.mqtt.stream import MAX_FRAME_BYTES
from vendhub.protocol.messages import Telemetry
from vendhub.services import fleet
from vendhub.services.context import ServiceContext
from vendhub.services.demo import seed_demo
from vendhub.services.fleet import TelemetryReading

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

INTERVAL_S = 60  # the machines table default telemetry interval


def reading(ctx: ServiceContext, machine_id: str, **fields: Any) -> TelemetryReading:
    return TelemetryReading(machine_id, ctx.clock(), Telemetry.from_raw(fields), dict(fields))


async def _set(ctx: ServiceContext, machine_id: str = "VM01", **values: Any) -> None:
    async with ctx.engine.begin() as conn:
        await conn.execute(sa.update(machines).where(machines.c.id == machine_id).values(**values))


async def test_a_reading_the_database_refuses_costs_only_itself_and_is_counted(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx)
    await quick_shop(ctx, machine_id="VM02")
    failed: list[str] = []
    ctx = dataclasses.replace(ctx, row_failed=failed.append)
    # Built without validation, as a reading that slipped past it would be: out of INTEGER.
    rogue = TelemetryReading("VM02", ctx.clock(), Telemetry(rssi=10**20), {"rssi": 1})
    batch = [
        reading(ctx, "VM01", temperature=4.5),
        rogue,
        reading(ctx, "VM02", temperature=5.5),
        reading(ctx, "VM01", temperature=6.5),
    ]
    assert await fleet.store_telemetry(ctx, batch) == 3
    stored = await rows(ctx, telemetry)
    assert [(r["machine_id"], r["temperature"]) for r in stored] == [
        ("VM01", 4.5),
        ("VM02", 5.5),
        ("VM01", 6.5),
    ]
    assert failed == ["telemetry"]
    assert {m["id"]: m["last_seen_at"] for m in await rows(ctx, machines)} == {
        "VM01": ctx.clock(),
        "VM02": ctx.clock(),
    }


async def test_a_good_batch_is_stored_in_one_transaction_and_an_empty_one_in_none(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    await quick_shop(ctx, machine_id="VM02")
    failed: list[str] = []
    ctx = dataclasses.replace(ctx, row_failed=failed.append)
    start = clock()
    clock.advance(2)
    latest = reading(ctx, "VM01", temperature=4.5)  # the batch is not in time order
    clock.advance(-1)
    batch = [
        latest,
        reading(ctx, "VM02", temperature=5.5),
        dataclasses.replace(latest, received_at=start, reading=Telemetry(temperature=6.5)),
    ]
    begun: list[object] = []
    count_begin = begun.append  # one bound method: `event.remove` needs the same object
    sync_engine = ctx.engine.sync_engine
    event.listen(sync_engine, "begin", count_begin)
    try:
        assert await fleet.store_telemetry(ctx, []) == 0
        assert begun == []
        assert await fleet.store_telemetry(ctx, batch) == 3
        assert len(begun) == 1  # not one per reading (the fallback after a refused batch)
    finally:
        event.remove(sync_engine, "begin", count_begin)
    assert failed == []
    stored = await rows(ctx, telemetry)
    assert [(r["machine_id"], r["temperature"]) for r in stored] == [
        ("VM01", 4.5),
        ("VM02", 5.5),
        ("VM01", 6.5),
    ]
    # Each machine last seen at its latest reading, whatever its place in the batch.
    assert {m["id"]: m["last_seen_at"] for m in await rows(ctx, machines)} == {
        "VM01": latest.received_at,
        "VM02": clock(),
    }


async def test_a_sensed_level_changes_only_that_machines_slot(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    await quick_shop(ctx, machine_id="VM02")
    clock.advance(7)
    level = [{"id": 2, "level": "LOW"}]
    assert await fleet.store_telemetry(ctx, [reading(ctx, "VM01", slots=level)]) == 1
    sensed = {
        (s["machine_id"], s["slot_number"]): (s["sensed_level"], s["sensed_at"])
        for s in await rows(ctx, slots)
        if s["slot_number"] in (1, 2)
    }
    assert sensed == {
        ("VM01", 1): (None, None),
        ("VM01", 2): ("LOW", clock()),
        ("VM02", 1): (None, None),
        ("VM02", 2): (None, None),
    }


async def test_telemetry_alone_keeps_a_machine_present(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    await _set(ctx, status="ONLINE", last_seen_at=clock())
    clock.advance(2 * INTERVAL_S)
    assert await fleet.store_telemetry(ctx, [reading(ctx, "VM01", temperature=4.0)]) == 1
    # Three intervals after the first contact, but two after the telemetry: still present.
    clock.advance(INTERVAL_S + 1)
    assert await fleet.mark_silent_machines_offline(ctx) == []
    [machine] = await rows(ctx, machines)
    assert machine["status"] == "ONLINE"
    clock.advance(2 * INTERVAL_S)
    assert await fleet.mark_silent_machines_offline(ctx) == ["VM01"]


async def test_a_machine_marked_offline_by_silence_is_online_again_when_its_telemetry_arrives(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    await _set(ctx, status="ONLINE", last_seen_at=clock())
    order_id = await order(ctx, slot=1)  # placed while ONLINE (an OFFLINE machine takes none)
    clock.advance(3 * INTERVAL_S + 1)
    assert await fleet.mark_silent_machines_offline(ctx) == ["VM01"]
    assert await pay(ctx, order_id, 8000) == "paid"
    assert await order_status(ctx, order_id) == "PENDING_DISPENSE"
    assert await outbox_rows(ctx, "dispense") == []

    clock.advance(5)
    assert await fleet.store_telemetry(ctx, [reading(ctx, "VM01", temperature=4.0)]) == 1
    [machine] = await rows(ctx, machines)
    assert (machine["status"], machine["last_seen_at"]) == ("ONLINE", clock())
    events = await rows(ctx, machine_events)
    assert [(e["event_type"], e["status"]) for e in events] == [
        ("STATUS", "OFFLINE"),
        ("STATUS", "ONLINE"),
    ]
    [command] = await outbox_rows(ctx, "dispense")
    assert command["body"]["orderId"] == order_id
    assert [r["body"] for r in await outbox_rows(ctx, "sync")] == [{"cmd": "sync"}]
    # Heard again while ONLINE: nothing more is recorded.
    clock.advance(5)
    await fleet.store_telemetry(ctx, [reading(ctx, "VM01", temperature=4.0)])
    assert len(await rows(ctx, machine_events)) == 2


async def test_a_reading_received_before_the_machine_went_offline_does_not_revive_it(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    early = reading(ctx, "VM01", temperature=4.0)  # queued, then its last will arrives
    clock.advance(1)
    await _set(ctx, status="OFFLINE", updated_at=clock())
    assert await fleet.store_telemetry(ctx, [early]) == 1
    [machine] = await rows(ctx, machines)
    assert machine["status"] == "OFFLINE"


async def test_a_machine_in_maintenance_stays_there_when_its_telemetry_arrives(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    await _set(ctx, status="MAINTENANCE", updated_at=clock())
    clock.advance(1)
    await fleet.store_telemetry(ctx, [reading(ctx, "VM01", temperature=4.0)])
    [machine] = await rows(ctx, machines)
    assert machine["status"] == "MAINTENANCE"


BAD_READINGS = [
    b'{"rssi":1e20,"temperature":9.0}',
    b'{"rssi":NaN,"temperature":9.0}',
    b'{"temperature":Infinity}',
    b'{"temperature":9.0,"door":"open\\u0000"}',
    b'{"humidity":140}',
    b'{"temperature":9.0,"extra":{"note":"\\u0000"}}',
    b'{"uptime":-5}',
    b'{"rssi":' + b"9" * 5000 + b"}",  # beyond int()'s 4300 digits: must cost only itself
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
async def test_bad_readings_among_good_ones_of_two_machines_are_dropped_and_counted_alone(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    prefix = unique("t")
    async with running(database_urls[backend], prefix) as container, device(prefix) as dev:
        await seed_demo(container.ctx, "VM02")
        good = [
            ("VM01", {"temperature": 4.5, "timestamp": "2026-11-27T08:00:00Z", "rssi": -63}),
            ("VM02", {"temperature": 5.5, "ts": 1_795_766_401, "humidity": 60.5}),
            ("VM01", {"temperature": 6.5, "uptime": 3600, "freeHeap": 180_000}),
        ]
        # Interleaved and sent back to back: they share the writer's batch window.
        for n, payload in enumerate(BAD_READINGS):
            await dev.publish("telemetry", payload, machine_id="VM01" if n % 2 else "VM02")
            if n < len(good):
                machine_id, body = good[n]
                await dev.publish("telemetry", body, machine_id=machine_id)

        async def all_good() -> list[dict[str, Any]]:
            found = await fetch(container.engine, sa.select(telemetry).order_by(telemetry.c.id))
            return found if len(found) == len(good) else []

        stored = await eventually(all_good)
        assert [(r["machine_id"], r["temperature"], r["device_ts"]) for r in stored] == [
            ("VM01", 4.5, 1_795_766_400),
            ("VM02", 5.5, 1_795_766_401),
            ("VM01", 6.5, None),
        ]
        payload = stored[2]["payload"]
        assert (json.loads(payload) if isinstance(payload, str) else payload) == good[2][1]

        async def counted() -> bool:
            return invalid(container, "telemetry") == len(BAD_READINGS)

        await eventually(counted)
        seen = {
            m["id"]: m["last_seen_at"] for m in await fetch(container.engine, sa.select(machines))
        }
        assert seen["VM01"] is not None and seen["VM02"] is not None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_over_the_broker_a_silent_machine_that_speaks_again_gets_its_waiting_command(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    prefix = unique("t")
    async with running(database_urls[backend], prefix) as container, device(prefix) as dev:
        ctx = container.ctx
        order_id = await order(ctx, slot=1)  # placed before the silence (OFFLINE takes none)
        long_ago = ctx.clock() - timedelta(hours=1)
        await _set(ctx, status="ONLINE", last_seen_at=long_ago, updated_at=long_ago)
        assert await fleet.mark_silent_machines_offline(ctx) in (["VM01"], [])

        async def offline() -> bool:
            [machine] = await fetch(container.engine, sa.select(machines))
            return machine["status"] == "OFFLINE"

        await eventually(offline)
        assert await pay(ctx, order_id, 8000) == "paid"
        assert await order_status(ctx, order_id) == "PENDING_DISPENSE"

        await dev.publish("telemetry", {"temperature": 4.2})
        command = await dev.next_command("dispense")
        assert command["orderId"] == order_id
        [machine] = await fetch(container.engine, sa.select(machines))
        assert machine["status"] == "ONLINE"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_over_the_broker_a_frame_too_big_to_buffer_is_skipped_and_counted(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    prefix = unique("t")
    async with running(database_urls[backend], prefix) as container, device(prefix) as dev:
        huge = b'{"note":"' + b"x" * (MAX_FRAME_BYTES + 1000) + b'"}'
        await dev.publish("telemetry", huge)
        await dev.publish("telemetry", {"temperature": 4.5})

        async def stored() -> list[dict[str, Any]]:
            return await fetch(container.engine, sa.select(telemetry))

        [row] = await eventually(stored)
        assert row["temperature"] == 4.5
        assert container.telemetry_stream.oversized == 1
        assert invalid(container, "telemetry") == 1
        connected = container.metrics.registry.get_sample_value("vendhub_mqtt_telemetry_connected")
        assert connected == 1
