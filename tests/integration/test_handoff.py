"""In-process hand-off of committed commands, its fallbacks, and webhook shedding at the edge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
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
    slot_row,
)
from tests.integration.test_mqtt_intake import eventually
from tests.integration.test_mqtt_outbox import next_cmd, subscriber
from vendhub.adapters.db.tables import dispenses
from vendhub.adapters.mqtt.client import MqttClient, MqttConfig
from vendhub.metrics import Metrics
from vendhub.services import commands
from vendhub.services.context import ServiceContext
from vendhub.services.outbox import CLAIM_LEASE_S, OutboxItem, OutboxKind
from vendhub.workers.publisher import OutboxPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def _nothing(_: Any) -> None:
    return None


@contextlib.asynccontextmanager
async def handing_off(
    ctx: ServiceContext, port: int, *, mark_delay_s: float = 3600
) -> AsyncIterator[OutboxPublisher]:
    """A connected publisher whose hand-off worker runs, but never its outbox poll; its
    deferred marks wait for `flush_marks` (or the end) unless `mark_delay_s` is short."""
    mqtt = MqttClient(
        config=MqttConfig(host=MQTT_HOST, port=port, client_id=unique("vendhub-test-")),
        subscriptions=[],
        on_message=_nothing,
    )
    publisher = OutboxPublisher(ctx, mqtt, Metrics(), mark_delay_s=mark_delay_s)
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
        assert await publisher.flush_marks() == 1
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


async def _unit(ctx: ServiceContext) -> dict[str, Any]:
    async with ctx.engine.connect() as conn:
        return dict((await conn.execute(sa.select(dispenses))).mappings().one())


async def test_a_handed_off_command_is_marked_later_with_the_time_it_was_really_published(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    prefix = unique("h")
    ctx.tunables = type(ctx.tunables)(topic_prefix=prefix)
    await quick_shop(ctx)
    order_id = await order(ctx)
    async with (
        subscriber(MQTT_PORT, f"{prefix}/+/command") as seen,
        handing_off(ctx, MQTT_PORT) as publisher,
    ):
        assert await pay(ctx, order_id, 8000) == "paid"
        await next_cmd(seen, "dispense")
        await publisher.drained()
        published = clock()
        # Out on the broker, not yet marked: still claimed, so the poll leaves it alone.
        [row] = await outbox_rows(ctx, "dispense")
        assert row["published_at"] is None and row["claimed_until"] > published
        assert await commands.pending(ctx) == []
        clock.advance(5)
        assert await publisher.flush_marks() == 1
    [row] = await outbox_rows(ctx, "dispense")
    assert row["published_at"] == published and row["attempts"] == 1
    unit = await _unit(ctx)
    # The retransmission timer runs from the publish, not from the mark.
    retry = published + timedelta(milliseconds=unit["timeout_ms"] + ctx.tunables.result_grace_ms)
    assert unit["attempts"] == 1 and unit["next_attempt_at"] == retry
    assert unit["command_sent_at"] == published
    assert await order_status(ctx, order_id) == "DISPENSING"


async def test_a_result_before_the_deferred_mark_closes_the_command_and_no_mark_is_written(
    ctx: ServiceContext,
) -> None:
    prefix = unique("h")
    ctx.tunables = type(ctx.tunables)(topic_prefix=prefix)
    await quick_shop(ctx)
    order_id = await order(ctx)
    async with (
        subscriber(MQTT_PORT, f"{prefix}/+/command") as seen,
        handing_off(ctx, MQTT_PORT) as publisher,
    ):
        assert await pay(ctx, order_id, 8000) == "paid"
        command = await next_cmd(seen, "dispense")
        await publisher.drained()
        assert publisher.marks_pending == 1
        assert await report(ctx, command) == "APPLIED"
        # The result's transaction closed the command's row; its ack dropped the mark.
        assert publisher.marks_pending == 0
        ack = await next_cmd(seen, "ack")
        assert ack["commandId"] == command["commandId"]
        await publisher.drained()
        assert await publisher.flush_marks() == 0
        assert all(r["published_at"] is not None for r in await outbox_rows(ctx))
    assert await order_status(ctx, order_id) == "COMPLETED"
    assert await commands.pending(ctx) == []


async def test_a_process_that_dies_before_the_deferred_mark_sends_the_same_command_again(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    prefix = unique("h")
    ctx.tunables = type(ctx.tunables)(topic_prefix=prefix)
    await quick_shop(ctx)
    order_id = await order(ctx)
    async with (
        subscriber(MQTT_PORT, f"{prefix}/+/command") as seen,
        handing_off(ctx, MQTT_PORT) as publisher,
    ):
        assert await pay(ctx, order_id, 8000) == "paid"
        first = await next_cmd(seen, "dispense")
        await publisher.drained()
        # The process dies: its marks, kept in memory, are gone.
        publisher._marks.clear()
    assert (await outbox_rows(ctx, "dispense"))[0]["published_at"] is None
    assert await commands.pending(ctx) == []  # claimed until the lease lapses
    clock.advance(CLAIM_LEASE_S + 1)
    mqtt = MqttClient(
        config=MqttConfig(host=MQTT_HOST, port=MQTT_PORT, client_id=unique("vendhub-test-")),
        subscriptions=[],
        on_message=_nothing,
    )
    run = asyncio.create_task(mqtt.run())
    try:
        async with subscriber(MQTT_PORT, f"{prefix}/+/command") as seen_again:
            assert await mqtt.wait_connected(within_s=10)
            # The next process's poll sends it again, with the same commandId ...
            assert await OutboxPublisher(ctx, mqtt, Metrics()).publish_pending() == 1
            again = await next_cmd(seen_again, "dispense")
    finally:
        await mqtt.stop()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert again["commandId"] == first["commandId"]
    # ... so the device re-publishes its remembered result: applied once, stock once.
    assert await report(ctx, again) == "APPLIED"
    assert await report(ctx, first) == "DUPLICATE"
    assert (await slot_row(ctx, 1))["current_stock"] == 7
    assert await order_status(ctx, order_id) == "COMPLETED"


async def test_an_ack_handed_off_is_written_already_marked_and_a_lost_one_comes_again(
    ctx: ServiceContext,
) -> None:
    await quick_shop(ctx)
    order_id = await order(ctx)
    handed: list[OutboxItem] = []
    ctx.hand_off = handed.extend
    assert await pay(ctx, order_id, 8000) == "paid"
    [dispense] = handed
    command = {"commandId": dispense.dispense_id, "orderId": order_id, "slot": 1}
    handed.clear()
    assert await report(ctx, command) == "APPLIED"
    [ack] = handed
    assert ack.premarked and ack.acks == dispense.dispense_id
    # The process dies before publishing it: the poll does not send it ...
    ctx.hand_off = None
    assert await commands.pending(ctx) == []
    # ... the device re-publishes its result until acked; the copy is acked again.
    assert await report(ctx, command) == "DUPLICATE"
    acks = await outbox_rows(ctx, "ack")
    assert len(acks) == 2
    # Without an in-process publisher, the new ack waits for the poll.
    [item] = await commands.pending(ctx)
    assert item.kind is OutboxKind.ACK and item.id == max(a["id"] for a in acks)
    assert (await slot_row(ctx, 1))["current_stock"] == 7


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


async def test_a_deferred_mark_leaves_out_a_unit_a_result_is_settling_and_never_waits_for_it(
    ctx: ServiceContext, backend: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no row locks: its writers take turns")
    await quick_shop(ctx)
    order_id = await order(ctx)
    handed: list[OutboxItem] = []
    ctx.hand_off = handed.extend
    assert await pay(ctx, order_id, 8000) == "paid"
    ctx.hand_off = None
    [item] = handed
    # A result's transaction holds the unit (it locks the unit first, then its outbox rows):
    # the mark must not take the outbox row first and then wait for the unit (a deadlock).
    async with ctx.engine.begin() as result_tx:
        await result_tx.execute(
            sa.select(dispenses.c.id)
            .where(dispenses.c.id == item.dispense_id)
            .with_for_update(key_share=True)
        )
        await asyncio.wait_for(commands.mark_done(ctx, [item], []), 10)
    [row] = await outbox_rows(ctx, "dispense")
    assert row["published_at"] is None  # left for the result (or, after the claim, the poll)
    assert (await _unit(ctx))["attempts"] == 0
    # Once free, the same mark goes through.
    await commands.mark_done(ctx, [item], [])
    [row] = await outbox_rows(ctx, "dispense")
    assert row["published_at"] is not None and (await _unit(ctx))["attempts"] == 1
