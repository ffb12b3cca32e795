"""The outbox with a broker that is down, comes up late, or never acknowledges."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import free_port, unique
from tests.integration.helpers import order, pay, report
from tests.integration.test_mqtt_intake import eventually, fetch
from vendhub.adapters.db.tables import outbox
from vendhub.adapters.mqtt.client import MqttClient, MqttConfig, MqttPublishError
from vendhub.adapters.mqtt.embedded import EmbeddedBroker
from vendhub.bootstrap import Container, build
from vendhub.config import Settings
from vendhub.entrypoints.api.app import create_app
from vendhub.metrics import Metrics
from vendhub.services import commands
from vendhub.services.context import ServiceContext
from vendhub.services.demo import seed_demo
from vendhub.services.orders import get_order
from vendhub.workers.publisher import OutboxPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def embedded_settings(database_url: str, port: int, prefix: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url,
        mqtt_broker_url=f"mqtt://127.0.0.1:{port}",
        mqtt_topic_prefix=prefix,
        mqtt_client_id=unique("vendhub-test-"),
        # A command missed by a late subscriber is re-sent soon (same commandId).
        result_grace_ms=300,
    )


@asynccontextmanager
async def subscriber(port: int, topic_filter: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=unique("dev"), protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        await client.subscribe(topic_filter, qos=1)

        async def pump() -> None:
            async for message in client.messages:
                if isinstance(message.payload, bytes) and message.payload:
                    await queue.put(json.loads(message.payload))

        task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def next_cmd(queue: asyncio.Queue[dict[str, Any]], cmd: str) -> dict[str, Any]:
    while True:
        body = await asyncio.wait_for(queue.get(), 15)
        if body.get("cmd") == cmd:
            return body


def record_publishes(container: Container) -> list[str]:
    """Topics the publisher tried to publish to, whether or not the broker took them."""
    attempts: list[str] = []
    publish = container.mqtt.publish

    async def recording(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        attempts.append(topic)
        await publish(topic, payload, qos, retain)

    container.mqtt.publish = recording  # type: ignore[method-assign]
    return attempts


async def _true(value: bool) -> bool:
    return value


async def dispense_rows(container: Container) -> list[dict[str, Any]]:
    return await fetch(container.engine, sa.select(outbox).where(outbox.c.kind == "dispense"))


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_an_order_paid_while_the_broker_is_down_waits_and_is_dispatched_once_it_is_up(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    port = free_port()
    prefix = unique("t")
    container = build(embedded_settings(database_urls[backend], port, prefix))
    attempts = record_publishes(container)
    broker = EmbeddedBroker("127.0.0.1", port)
    app = create_app(container=container)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    try:
        await seed_demo(container.ctx)
        await container.start()  # the MQTT client keeps retrying with backoff
        assert (await http.get("/ready")).status_code == 503
        order_id = await order(container.ctx, slot=1)
        assert await pay(container.ctx, order_id, 8000) == "paid"
        assert (await get_order(container.ctx, order_id))["status"] == "PENDING_DISPENSE"
        # The publisher tries (seen through its publish calls) and, with nothing acknowledged,
        # marks nothing sent.
        container.publisher.wake()
        await eventually(lambda: _true(any(t.endswith("/VM01/command") for t in attempts)))
        [row] = await dispense_rows(container)
        assert row["published_at"] is None
        assert not container.mqtt.connected

        await broker.start()
        async with subscriber(port, f"{prefix}/VM01/command") as commands_seen:
            command = await next_cmd(commands_seen, "dispense")
            assert (command["orderId"], command["slot"]) == (order_id, 1)
            view = await eventually(lambda: _status_is(container, order_id, "DISPENSING"))
            assert view["dispenses"][0]["id"] == command["commandId"]
            assert view["dispenses"][0]["attempts"] >= 1
            rows = await dispense_rows(container)
            assert rows[0]["published_at"] is not None
            assert rows[0]["last_error"] is None
            ready = await http.get("/ready")
            assert ready.status_code == 200
            assert ready.json() == {"ready": True, "database": True, "mqtt": True}
    finally:
        await http.aclose()
        await container.stop()
        await broker.stop()


async def _status_is(container: Container, order_id: str, status: str) -> dict[str, Any] | None:
    view = await get_order(container.ctx, order_id)
    return view if view["status"] == status else None


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_dispense_whose_unit_settled_before_sending_is_never_published(
    engine: AsyncEngine, database_urls: dict[str, str], backend: str
) -> None:
    port = free_port()
    prefix = unique("t")
    broker = EmbeddedBroker("127.0.0.1", port)
    await broker.start()
    container = build(embedded_settings(database_urls[backend], port, prefix))
    try:
        async with subscriber(port, f"{prefix}/VM01/command") as commands_seen:
            await seed_demo(container.ctx)
            await container.start(workers=False)  # no MQTT yet: the command stays queued
            order_id = await order(container.ctx, slot=1)
            assert await pay(container.ctx, order_id, 8000) == "paid"
            [pending] = await commands.pending(container.ctx)
            assert (pending.kind, pending.sendable) == ("dispense", True)
            # The unit settles first (e.g. a device answering a copy sent by another replica).
            assert await report(container.ctx, json.loads(pending.payload)) == "APPLIED"
            await commands.release(container.ctx, [pending])  # as a publisher cut short would
            # The result's transaction closed the unsent command: only its ack is left.
            [ack] = await commands.pending(container.ctx)
            assert (ack.kind, ack.sendable) == ("ack", True)
            await commands.release(container.ctx, [ack])

            await container.start()
            # The ack was queued after the dispense; everything before it on the wire is seen.
            before_ack = []
            while (body := await asyncio.wait_for(commands_seen.get(), 15))["cmd"] != "ack":
                before_ack.append(body["cmd"])
            assert body["commandId"] == pending.dispense_id
            assert "dispense" not in before_ack
            [row] = await dispense_rows(container)
            assert row["published_at"] is not None and row["attempts"] == 0
            assert container.metrics.registry.get_sample_value(
                "vendhub_mqtt_messages_out_total", {"kind": "dispense"}
            ) in (None, 0.0)
            assert (await get_order(container.ctx, order_id))["status"] == "COMPLETED"
    finally:
        await container.stop()
        await broker.stop()


class FlakyMqtt(MqttClient):
    """Connected, but the broker does not acknowledge until told to."""

    acknowledge = False
    published: list[str]

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if not self.acknowledge:
            raise MqttPublishError(f"publish to {topic} failed: timed out waiting for PUBACK")
        self.published.append(topic)

    async def wait_connected(self, within_s: float | None = None) -> bool:
        return True


async def test_an_outbox_row_is_marked_published_only_after_the_broker_acknowledged(
    ctx: ServiceContext,
) -> None:
    await seed_demo(ctx)
    order_id = await order(ctx, slot=1)
    assert await pay(ctx, order_id, 8000) == "paid"
    mqtt = FlakyMqtt(MqttConfig(host="127.0.0.1"), [], on_message=_ignore, connected=True)
    mqtt.published = []
    publisher = OutboxPublisher(ctx, mqtt, Metrics())

    assert await publisher.publish_pending() == 0
    [row] = await fetch(ctx.engine, sa.select(outbox))
    assert (row["published_at"], row["attempts"]) == (None, 0)
    view = await get_order(ctx, order_id)
    assert view["dispenses"][0]["attempts"] == 0
    assert view["dispenses"][0]["command_sent_at"] is None

    mqtt.acknowledge = True
    assert await publisher.publish_pending() == 1
    [row] = await fetch(ctx.engine, sa.select(outbox))
    assert row["published_at"] is not None and row["attempts"] == 1
    assert mqtt.published == [row["topic"]]
    view = await get_order(ctx, order_id)
    assert view["dispenses"][0]["attempts"] == 1
    assert view["dispenses"][0]["command_sent_at"] is not None
    # Published once: a further pass sends nothing.
    assert await publisher.publish_pending() == 0


async def _ignore(message: object) -> None:
    return None
