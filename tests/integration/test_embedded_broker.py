"""The embedded (amqtt) broker under the demo's load: many machines at once, retained once."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from tests.conftest import free_port, unique
from vendhub.adapters.mqtt.embedded import EmbeddedBroker
from vendhub.sim.fleet import run_fleet
from vendhub.sim.options import SimOptions
from vendhub.sim.stats import FleetStats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MACHINES = 200


@pytest.fixture
async def broker() -> AsyncIterator[int]:
    port = free_port()
    embedded = EmbeddedBroker("127.0.0.1", port)
    await embedded.start()
    try:
        yield port
    finally:
        await embedded.stop()


async def retained(port: int, topic_filter: str, client: aiomqtt.Client | None = None) -> list[str]:
    """Topics of what one subscription gets until the broker has been quiet for a second."""
    got: list[str] = []

    async def read(c: aiomqtt.Client) -> None:
        await c.subscribe(topic_filter, qos=1)
        while True:
            message = await asyncio.wait_for(anext(aiter(c.messages)), 1.0)
            got.append(str(message.topic))

    if client is not None:
        with pytest.raises(TimeoutError):
            await read(client)
        return got
    async with aiomqtt.Client("127.0.0.1", port, identifier=unique("probe-")) as c:
        with pytest.raises(TimeoutError):
            await read(c)
    return got


async def test_200_machines_connecting_at_once_all_connect_once_without_errors(
    broker: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    prefix = unique("emb")
    stats, stop = FleetStats(), asyncio.Event()
    # The backend's subscriptions are there too: amqtt replayed their retained matches to
    # every connecting client.
    async with aiomqtt.Client("127.0.0.1", broker, identifier=unique("backend-")) as backend:
        for kind in ("status", "telemetry", "dispense_result"):
            await backend.subscribe(f"{prefix}/+/{kind}", qos=1)
        options = SimOptions(
            port=broker,
            prefix=prefix,
            count=MACHINES,
            id_pattern=unique("E") + "{n:03d}",
            connects_per_s=0,  # all at once
            telemetry_interval_s=3600,
        )
        fleet = asyncio.create_task(run_fleet(options, stop, stats))
        try:
            for _ in range(600):  # bounded: 60 s
                if stats.connects >= MACHINES:
                    break
                await asyncio.sleep(0.1)
            # Every device's retained status has gone through the broker (the backend's
            # subscription saw it) before the probe subscribes: a probe subscribing while a
            # status was still being routed got it twice, retained and live.
            seen: set[str] = set()
            async with asyncio.timeout(60):
                async for message in backend.messages:
                    if str(message.topic).endswith("/status"):
                        seen.add(str(message.topic))
                    if len(seen) >= MACHINES:
                        break
            await asyncio.sleep(2)  # room for reconnects, which must not happen
            assert stats.connects == MACHINES
            topics = await retained(broker, f"{prefix}/+/status")
        finally:
            stop.set()
            await fleet
    counts = collections.Counter(topics)
    assert len(counts) == MACHINES and set(counts.values()) == {1}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors[:5]]


async def test_a_client_resubscribing_after_reconnect_gets_each_retained_message_once(
    broker: int,
) -> None:
    prefix = unique("emb")
    async with aiomqtt.Client("127.0.0.1", broker, identifier=unique("pub-")) as pub:
        for n in range(3):
            await pub.publish(f"{prefix}/M{n}/status", b'{"status":"ONLINE"}', qos=1, retain=True)
    client_id = unique("device-")
    for _ in range(2):  # a persistent session, connecting twice, subscribing each time
        async with aiomqtt.Client(
            "127.0.0.1", broker, identifier=client_id, clean_session=False
        ) as client:
            topics = await retained(broker, f"{prefix}/+/status", client)
        assert sorted(topics) == [f"{prefix}/M{n}/status" for n in range(3)]
