"""In-process hand-off of committed commands, its fallbacks, and webhook shedding at the edge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import MQTT_HOST, MQTT_PORT, FakeClock, free_port, unique
from tests.integration.helpers import (
    api_client,
    assert_error,
    order,
    order_status,
    outbox_rows,
    pay,
    quick_shop,
    report,
    sandbox,
)
from tests.integration.test_mqtt_intake import eventually
from tests.integration.test_mqtt_outbox import next_cmd, subscriber
from vendhub.adapters.db.tables import dispenses
from vendhub.adapters.mqtt.client import MqttClient, MqttConfig
from vendhub.metrics import Metrics
from vendhub.services import commands
from vendhub.services.context import ServiceContext
from vendhub.services.outbox import CLAIM_LEASE_S, OutboxItem
from vendhub.workers.publisher import OutboxPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def _nothing(_: Any) -> None:
    return None


@contextlib.asynccontextmanager
async def handing_off(ctx: ServiceContext, port: int) -> AsyncIterator[OutboxPublisher]:
    """A connected publisher whose hand-off worker runs, but never its outbox poll."""
    mqtt = MqttClient(
        config=MqttConfig(host=MQTT_HOST, port=port, client_id=unique("vendhub-test-")),
        subscriptions=[],
        on_message=_nothing,
    )
    publisher = OutboxPublisher(ctx, mqtt, Metrics())
    tasks = [asyncio.create_task(mqtt.run()), asyncio.create_task(publisher.run_handoffs())]
    try:
        assert await mqtt.wait_connected(within_s=10)
        ctx.hand_off = publisher.hand_off
        yield publisher
    finally:
        ctx.hand_off = None
        await mqtt.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_paid_units_command_is_published_right_after_the_commit_without_the_poll(
    ctx: ServiceContext,
) -> None:
    prefix = unique("h")
    ctx.tunables = type(ctx.tunables)(topic_prefix=prefix)
    await quick_shop(ctx)
    order_id = await order(ctx)
    async with (
        subscriber(MQTT_PORT, f"{prefix}/+/command") as commands_seen,
        handing_off(ctx, MQTT_PORT) as publisher,
    ):
        assert await pay(ctx, order_id, 8000) == "paid"
        command = await next_cmd(commands_seen, "dispense")
        assert command["orderId"] == order_id
        await publisher.drained()
        [row] = await outbox_rows(ctx, "dispense")
        assert row["published_at"] is not None and row["attempts"] == 1
        async with ctx.engine.connect() as conn:
            unit = (await conn.execute(sa.select(dispenses))).mappings().one()
        assert unit["attempts"] == 1 and unit["next_attempt_at"] is not None
        # The result's ack goes the same way: after the result's commit, no poll.
        assert await report(ctx, command) == "APPLIED"
        ack = await next_cmd(commands_seen, "ack")
        assert ack["commandId"] == command["commandId"]
        await publisher.drained()
        assert all(r["published_at"] is not None for r in await outbox_rows(ctx))
    assert await order_status(ctx, order_id) == "COMPLETED"
    # Nothing is left for the poll to send a second time.
    assert await commands.pending(ctx) == []


async def test_a_lost_hand_off_is_published_by_the_outbox_poll_once_its_claim_lapses(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    await quick_shop(ctx)
    order_id = await order(ctx)
    lost: list[OutboxItem] = []
    ctx.hand_off = lost.extend  # the process dies between the commit and the publish
    assert await pay(ctx, order_id, 8000) == "paid"
    ctx.hand_off = None
    [handed] = lost
    # Claimed at insert, so neither this poll nor another replica's sends it twice ...
    assert await commands.pending(ctx) == []
    clock.advance(CLAIM_LEASE_S + 1)
    # ... until the claim lapses: then the outbox is the durable fallback.
    [item] = await commands.pending(ctx)
    assert (item.id, item.kind, item.dispense_id) == (handed.id, handed.kind, handed.dispense_id)
    assert item.sendable


async def test_a_hand_off_while_the_broker_is_away_goes_back_to_the_poll_at_once(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx)
    order_id = await order(ctx)
    handed: list[OutboxItem] = []
    ctx.hand_off = handed.extend
    assert await pay(ctx, order_id, 8000) == "paid"
    ctx.hand_off = None
    nobody = MqttClient(
        config=MqttConfig(host="127.0.0.1", port=free_port(), client_id=unique("t")),
        subscriptions=[],
        on_message=_nothing,
    )
    publisher = OutboxPublisher(ctx, nobody, Metrics())
    assert await publisher.publish_handed(handed) == 0
    # Released, not left claimed for the lease: it goes out as soon as the broker is back.
    [item] = await commands.pending(ctx)
    assert item.id == handed[0].id
    [row] = await outbox_rows(ctx, "dispense")
    assert row["published_at"] is None


async def test_webhooks_beyond_the_in_flight_limit_are_shed_with_retry_after_and_change_nothing(
    engine: Any, database_urls: dict[str, str], backend: str
) -> None:
    async with api_client(database_urls[backend], webhook_max_inflight=1) as (client, container):
        ctx = container.ctx
        await quick_shop(ctx)
        order_id = await order(ctx)
        body = sandbox().signed_notification(order_id, 8000, "settlement")
        gate = client._transport.app.state.webhook_gate  # type: ignore[attr-defined]
        assert gate.enter()  # one notification is being worked on
        shed = await client.post("/api/payments/webhook", content=body)
        assert_error(shed, 503, "overloaded")
        assert shed.headers["retry-after"] == "1"
        assert await order_status(ctx, order_id) == "PENDING"
        gate.leave()
        # The gateway's retry is admitted and applied.
        retried = await client.post("/api/payments/webhook", content=body)
        assert retried.status_code == 200, retried.text
        assert retried.json()["outcome"] == "paid"
        assert await order_status(ctx, order_id) in ("PENDING_DISPENSE", "DISPENSING")
        assert gate.inflight == 0 and gate.shed == 1


async def test_admitted_webhooks_beyond_the_concurrency_wait_their_turn_and_are_then_applied(
    engine: Any, database_urls: dict[str, str], backend: str
) -> None:
    async with api_client(
        database_urls[backend], webhook_max_inflight=4, webhook_concurrency=1
    ) as (client, container):
        ctx = container.ctx
        await quick_shop(ctx)
        order_id = await order(ctx)
        body = sandbox().signed_notification(order_id, 8000, "settlement")
        gate = client._transport.app.state.webhook_gate  # type: ignore[attr-defined]
        await gate.working.acquire()  # the one working slot is taken
        posting = asyncio.create_task(client.post("/api/payments/webhook", content=body))
        # Admitted, then waiting for the slot.
        await eventually(lambda: asyncio.sleep(0, gate.inflight == 1))
        assert not posting.done()
        assert await order_status(ctx, order_id) == "PENDING"
        gate.working.release()
        response = await posting
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "paid"
        assert gate.inflight == 0 and gate.shed == 0
