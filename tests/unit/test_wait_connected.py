"""Waiting for the broker connection gives way to a cancellation, even one that comes with
the connection itself: Python 3.11's asyncio.wait_for returned True instead (CPython
gh-86296), and the outbox publisher waiting there then outlived Container.stop()."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from vendhub.adapters.mqtt.client import MqttClient, MqttConfig
from vendhub.adapters.mqtt.stream import StreamSubscriber


async def _ignore(*_: object) -> None:
    return None


def _client() -> MqttClient:
    return MqttClient(config=MqttConfig(host="127.0.0.1"), subscriptions=[], on_message=_ignore)


def _stream() -> StreamSubscriber:
    return StreamSubscriber(
        config=MqttConfig(host="127.0.0.1"), topic_filters=[], on_frames=lambda _: True
    )


@pytest.mark.parametrize("make", [_client, _stream], ids=["aiomqtt", "telemetry-stream"])
async def test_a_cancel_that_comes_with_the_connection_is_not_lost(
    make: Callable[[], MqttClient | StreamSubscriber],
) -> None:
    connection = make()
    waiting = asyncio.create_task(connection.wait_connected(within_s=30))
    await asyncio.sleep(0)  # it waits now
    connection._up.set()  # the connection comes up
    waiting.cancel()  # as the service stops
    await asyncio.wait({waiting})
    assert waiting.cancelled()


@pytest.mark.parametrize("make", [_client, _stream], ids=["aiomqtt", "telemetry-stream"])
async def test_without_a_connection_the_wait_ends_false_when_its_time_is_up(
    make: Callable[[], MqttClient | StreamSubscriber],
) -> None:
    assert await make().wait_connected(within_s=0.01) is False
