"""MQTT intake against the real Mosquitto: the whole container runs, the test plays the device."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiomqtt
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import MQTT_HOST, MQTT_PORT, unique
from tests.integration.helpers import order, pay, slot_row
from vendhub.adapters.db.tables import machine_events, machines, outbox, stock_logs, telemetry
from vendhub.bootstrap import Container, build
from vendhub.config import Settings
from vendhub.protocol.messages import InvalidPayload, parse_status, parse_telemetry
from vendhub.protocol.topics import InvalidTopic, parse_topic
from vendhub.services.demo import seed_demo
from vendhub.services.orders import get_order

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")
WAIT_S = 10.0


async def eventually(check: Callable[[], Awaitable[T]], within: float = WAIT_S) -> T:
    """Poll `check` until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last value {value!r})")
        await asyncio.sleep(0.05)


class Device:
    """A test harness in place of an ESP32: sees the machine's commands, publishes its topics."""

    def __init__(self, client: aiomqtt.Client, prefix: str, machine_id: str) -> None:
        self.client = client
        self.prefix = prefix
        self.machine_id = machine_id
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def pump(self) -> None:
        async for message in self.client.messages:
            if isinstance(message.payload, bytes) and message.payload:
                await self.commands.put(json.loads(message.payload))

    async def next_command(self, cmd: str, within: float = WAIT_S) -> dict[str, Any]:
        """The next command of kind `cmd`; other kinds are skipped."""
        deadline = time.monotonic() + within
        while True:
            body = await asyncio.wait_for(
                self.commands.get(), max(0.01, deadline - time.monotonic())
            )
            if body.get("cmd") == cmd:
                return body

    async def publish(
        self,
        kind: str,
        payload: bytes | dict[str, Any],
        *,
        retain: bool = False,
        machine_id: str | None = None,
    ) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        name = f"{self.prefix}/{machine_id or self.machine_id}/{kind}"
        await self.client.publish(name, data, qos=1, retain=retain)


@asynccontextmanager
async def device(prefix: str, machine_id: str = "VM01") -> AsyncIterator[Device]:
    async with aiomqtt.Client(
        MQTT_HOST, MQTT_PORT, identifier=unique("dev"), protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        await client.subscribe(f"{prefix}/{machine_id}/command", qos=1)
        harness = Device(client, prefix, machine_id)
        task = asyncio.create_task(harness.pump())
        try:
            yield harness
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def settings_for(database_url: str, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "mqtt_broker_url": f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
        "mqtt_topic_prefix": prefix,
        "mqtt_client_id": unique("vendhub-test-"),
        # Tests poll the API from one address; the limits' own tests set them low.
        "rate_limit_default": "100000/minute",
        "rate_limit_orders": "100000/minute",
        "anon_max_unpaid_units": 100,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


@asynccontextmanager
async def running(database_url: str, prefix: str, *, seed: bool = True) -> AsyncIterator[Container]:
    """The container as `vendhub serve` runs it (intake, publisher, timers, MQTT), demo seeded."""
    container = build(settings_for(database_url, prefix))
    try:
        if seed:
            await seed_demo(container.ctx)
        await container.start()
        assert await container.mqtt.wait_connected(within_s=WAIT_S), "backend never connected"
        yield container
    finally:
        await container.stop()


def invalid(container: Container, kind: str) -> float:
    value = container.metrics.registry.get_sample_value(
        "vendhub_mqtt_invalid_payloads_total", {"kind": kind}
    )
    return value or 0.0


async def fetch(engine: AsyncEngine, stmt: sa.Select[Any]) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_malformed_payloads_are_dropped_counted_and_the_consumer_keeps_going(
    engine: AsyncEngine,
    database_urls: dict[str, str],
    backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = unique("t")
    caplog.set_level(logging.WARNING, logger="vendhub.workers.intake")
    async with running(database_urls[backend], prefix) as container, device(prefix) as dev:
        ctx = container.ctx
        order_id = await order(ctx, slot=1)
        assert await pay(ctx, order_id, 8000) == "paid"
        command = await dev.next_command("dispense")
        good_result = {
            "commandId": command["commandId"],
            "orderId": order_id,
            "slot": 1,
            "success": True,
            "dropDetected": True,
            "durationMs": 1500,
            "error": None,
        }
        huge = json.dumps({**good_result, "pad": "x" * 9000}).encode()
        bad_results: list[bytes] = [
            b"not json",
            b"[1, 2, 3]",
            json.dumps({**good_result, "slot": "1"}).encode(),  # strings are not numbers
            json.dumps({**good_result, "success": "true"}).encode(),
            huge,
            b"\xff\xfe",
        ]
        bad_telemetry: list[bytes] = [
            b"{",
            b"[]",
            b'{"temperature": "hot"}',
            b'{"slots": [{"id": 1, "level": "OVERFLOWING"}]}',
            json.dumps({"temperature": 4.0, "pad": "x" * 9000}).encode(),
        ]
        bad_status: list[bytes] = [b"nope", b"[]", b'{"status": "SLEEPING"}', b'{"fw": "1.0"}']
        for payload in bad_results:
            await dev.publish("dispense_result", payload)
        for payload in bad_telemetry:
            await dev.publish("telemetry", payload)
        for payload in bad_status:
            await dev.publish("status", payload)
        await dev.publish("telemetry", {"temperature": 5.0}, machine_id="bad.id")

        # Valid messages after the garbage are still applied.
        await dev.publish("telemetry", {"temperature": 3.5})
        await dev.publish("dispense_result", good_result)
        ack = await dev.next_command("ack")
        assert ack == {"cmd": "ack", "commandId": command["commandId"]}
        rows = await eventually(
            lambda: fetch(container.engine, sa.select(telemetry).order_by(telemetry.c.id))
        )
        assert [r["temperature"] for r in rows] == [3.5]

        async def counted() -> bool:
            return (
                invalid(container, "dispense_result"),
                invalid(container, "telemetry"),
                invalid(container, "status"),
                invalid(container, "topic"),
            ) == (len(bad_results), len(bad_telemetry), len(bad_status), 1)

        await eventually(counted)
        view = await get_order(ctx, order_id)
        assert view["status"] == "COMPLETED"
        slot = await slot_row(ctx, 1)
        assert (slot["current_stock"], slot["reserved"]) == (7, 0)
        # A bad status changed nothing about the machine.
        [machine] = await fetch(container.engine, sa.select(machines))
        assert machine["status"] != "SLEEPING"
        assert await fetch(container.engine, sa.select(machine_events)) == []
        # Each drop is logged with where it came from and why, for the operator.
        dropped = [r.getMessage() for r in caplog.records if r.name == "vendhub.workers.intake"]
        with pytest.raises(InvalidPayload) as telemetry_error:
            parse_telemetry(b"{")
        with pytest.raises(InvalidPayload) as status_error:
            parse_status(b"nope")
        assert f"dropped invalid payload on {prefix}/VM01/telemetry: {telemetry_error.value}" in (
            dropped
        )
        assert f"dropped invalid payload on VM01/status: {status_error.value}" in dropped
        bad_topic = f"{prefix}/bad.id/telemetry"
        with pytest.raises(InvalidTopic) as topic_error:
            parse_topic(prefix, bad_topic)
        assert f"dropped message on {bad_topic}: {topic_error.value}" in dropped


async def test_telemetry_is_stored_with_any_temperature_name_and_sensed_levels_leave_stock_alone(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    prefix = unique("t")
    async with running(database_urls[backend], prefix) as container, device(prefix) as dev:
        before = await slot_row(container.ctx, 1)
        await dev.publish(
            "telemetry",
            {"ts": 1795744800, "temperature": 4.5, "humidity": 61.2, "rssi": -63, "door": "closed"},
        )
        await dev.publish("telemetry", {"temp": 6.25, "firmwareField": "ignored"})
        await dev.publish("telemetry", {"value": -1.5, "slots": [{"id": 1, "level": "LOW"}]})

        async def three() -> list[dict[str, Any]]:
            rows = await fetch(container.engine, sa.select(telemetry).order_by(telemetry.c.id))
            return rows if len(rows) == 3 else []

        rows = await eventually(three)
        assert [r["temperature"] for r in rows] == [4.5, 6.25, -1.5]
        assert rows[0]["humidity"] == 61.2 and rows[0]["rssi"] == -63
        assert rows[0]["door"] == "closed" and rows[0]["device_ts"] == 1795744800
        assert all(r["machine_id"] == "VM01" for r in rows)
        stored = rows[1]["payload"]
        if isinstance(stored, str):
            stored = json.loads(stored)
        assert stored == {"temp": 6.25, "firmwareField": "ignored"}

        after = await eventually(
            lambda: _slot_when(container, 1, lambda s: s["sensed_level"] == "LOW")
        )
        assert before["sensed_level"] is None
        assert (after["current_stock"], after["reserved"]) == (
            before["current_stock"],
            before["reserved"],
        )
        assert (
            await fetch(
                container.engine, sa.select(stock_logs).where(stock_logs.c.change_type != "RESTOCK")
            )
            == []
        )


async def _slot_when(
    container: Container, number: int, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    row = await slot_row(container.ctx, number)
    return row if predicate(row) else None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_retained_online_status_with_a_new_boot_id_records_it_and_sends_sync(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    prefix = unique("t")
    status_topic = f"{prefix}/VM01/status"
    async with device(prefix) as dev:
        # Retained before the backend exists: it must pick it up when it subscribes.
        await dev.publish(
            "status", {"status": "ONLINE", "fw": "1.2.0", "bootId": "b1"}, retain=True
        )
        try:
            async with running(database_urls[backend], prefix) as container:

                async def machine() -> dict[str, Any] | None:
                    [row] = await fetch(container.engine, sa.select(machines))
                    return row if row["boot_id"] == "b1" else None

                row = await eventually(machine)
                assert (row["status"], row["fw"]) == ("ONLINE", "1.2.0")
                [event] = await eventually(
                    lambda: fetch(container.engine, sa.select(machine_events))
                )
                assert (event["machine_id"], event["status"]) == ("VM01", "ONLINE")
                assert "b1" in event["message"]
                # Queued through the outbox (the on-connect sync is published directly).
                syncs = await eventually(lambda: _published(container, "sync"))
                assert [s["topic"] for s in syncs] == [f"{prefix}/VM01/command"]
                assert await dev.next_command("sync") == {"cmd": "sync"}

                # Same boot again: nothing new. A new boot: recorded, and another sync.
                await dev.publish("status", {"status": "ONLINE", "bootId": "b1"})
                await dev.publish("status", {"status": "ONLINE", "bootId": "b2"})
                await eventually(lambda: _rows_if(container, machine_events, 2))
                syncs = await eventually(lambda: _published(container, "sync", 2))
                assert len(syncs) == 2
                [row] = await fetch(container.engine, sa.select(machines))
                assert row["boot_id"] == "b2"
        finally:
            await dev.client.publish(status_topic, b"", qos=1, retain=True)


async def test_one_machines_statuses_are_applied_in_the_order_they_arrived(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    """A burst of reboots and last wills from one device: the machine ends as the last
    message says and its events are recorded in order (the intake routes one machine's
    messages to one worker; eight workers sharing a queue applied them out of order)."""
    prefix = unique("t")
    boots = [f"b{i:02d}" for i in range(1, 31)]
    async with running(database_urls[backend], prefix) as container, device(prefix) as dev:
        for boot in boots:
            await dev.publish("status", {"status": "OFFLINE"})
            await dev.publish("status", {"status": "ONLINE", "fw": "1.0", "bootId": boot})

        async def settled() -> list[dict[str, Any]] | None:
            rows = await fetch(
                container.engine,
                sa.select(machine_events)
                .where(machine_events.c.machine_id == "VM01")
                .order_by(machine_events.c.id),
            )
            return rows if len(rows) == 2 * len(boots) else None

        events = await eventually(settled, within=30)
        assert [e["status"] for e in events] == ["OFFLINE", "ONLINE"] * len(boots)
        onlines = [e["message"] for e in events if e["status"] == "ONLINE"]
        assert [m.split("(boot ")[1].rstrip(")") for m in onlines] == boots
        [row] = await fetch(container.engine, sa.select(machines).where(machines.c.id == "VM01"))
        assert (row["status"], row["boot_id"]) == ("ONLINE", boots[-1])


async def _published(
    container: Container, kind: str, count: int = 1
) -> list[dict[str, Any]] | None:
    rows = await fetch(
        container.engine,
        sa.select(outbox).where(outbox.c.kind == kind, outbox.c.published_at.is_not(None)),
    )
    return rows if len(rows) == count else None


async def _rows_if(
    container: Container, table: sa.Table, count: int
) -> list[dict[str, Any]] | None:
    rows = await fetch(container.engine, sa.select(table))
    return rows if len(rows) == count else None


async def test_a_paid_order_is_dispensed_acked_and_a_duplicate_result_changes_stock_once(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    prefix = unique("t")
    async with running(database_urls[backend], prefix) as container, device(prefix) as dev:
        ctx = container.ctx
        order_id = await order(ctx, slot=2)
        assert await pay(ctx, order_id, 5000) == "paid"
        command = await dev.next_command("dispense")
        assert set(command) == {"cmd", "commandId", "orderId", "slot", "timeoutMs", "expiresAt"}
        assert (command["orderId"], command["slot"], command["timeoutMs"]) == (order_id, 2, 2150)
        assert command["expiresAt"] > time.time()
        assert len(json.dumps(command, separators=(",", ":"))) < 256
        result = {
            "commandId": command["commandId"],
            "orderId": order_id,
            "slot": 2,
            "success": True,
            "dropDetected": True,
            "durationMs": 1800,
            "error": None,
        }
        await dev.publish("dispense_result", result)
        assert await dev.next_command("ack") == {"cmd": "ack", "commandId": command["commandId"]}
        # QoS 1 redelivery or a device re-publishing before it saw the ack.
        await dev.publish("dispense_result", result)
        assert await dev.next_command("ack") == {"cmd": "ack", "commandId": command["commandId"]}

        view = await get_order(ctx, order_id)
        assert view["status"] == "COMPLETED"
        [unit] = view["dispenses"]
        assert (unit["id"], unit["status"], unit["duration_ms"]) == (
            command["commandId"],
            "DROPPED",
            1800,
        )
        slot = await slot_row(ctx, 2)
        assert (slot["current_stock"], slot["reserved"]) == (7, 0)
        logs = await fetch(
            container.engine, sa.select(stock_logs).where(stock_logs.c.change_type == "DISPENSE")
        )
        assert len(logs) == 1
        outcomes = {
            o: container.metrics.registry.get_sample_value(
                "vendhub_dispense_results_total", {"outcome": o}
            )
            for o in ("APPLIED", "DUPLICATE")
        }
        assert outcomes == {"APPLIED": 1.0, "DUPLICATE": 1.0}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_redelivered_result_without_command_id_does_not_settle_the_next_unit(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    prefix = unique("t")
    async with running(database_urls[backend], prefix) as container, device(prefix) as dev:
        ctx = container.ctx
        order_id = await order(ctx, slot=1, quantity=2)
        assert await pay(ctx, order_id, 16000) == "paid"
        first = await dev.next_command("dispense")
        # A seed-era device: no commandId in its results.
        seed_result = {
            "orderId": order_id,
            "slot": 1,
            "success": True,
            "dropDetected": True,
            "durationMs": 50,
        }
        await asyncio.sleep(0.06)  # the motor runs before the device can answer
        await dev.publish("dispense_result", seed_result)
        second = await dev.next_command("dispense")
        assert second["commandId"] != first["commandId"]
        # The broker delivers the first result again once the second unit is in flight.
        await dev.publish("dispense_result", seed_result)

        async def duplicates() -> bool:
            value = container.metrics.registry.get_sample_value(
                "vendhub_dispense_results_total", {"outcome": "DUPLICATE"}
            )
            return value == 1.0

        await eventually(duplicates)
        view = await get_order(ctx, order_id)
        assert [u["status"] for u in view["dispenses"]] == ["DROPPED", "IN_FLIGHT"]
        assert view["status"] == "DISPENSING"
        assert (await slot_row(ctx, 1))["current_stock"] == 7
        # The second unit's own result, a real motor run later, still applies.
        await asyncio.sleep(0.06)
        await dev.publish("dispense_result", {**seed_result, "durationMs": 40})

        async def completed() -> bool:
            return (await get_order(ctx, order_id))["status"] == "COMPLETED"

        await eventually(completed)
        assert (await slot_row(ctx, 1))["current_stock"] == 6
