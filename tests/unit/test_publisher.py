"""The outbox publisher hands each row to the MQTT client as stored and counts it by kind."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from vendhub.adapters.mqtt.client import MqttClient
from vendhub.metrics import Metrics
from vendhub.services.context import ServiceContext
from vendhub.services.outbox import OutboxItem, OutboxKind
from vendhub.workers.publisher import OutboxPublisher


class RecordingMqtt:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload, qos, retain))


async def test_each_row_is_published_with_its_qos_and_retain_flag_and_counted_by_kind() -> None:
    config = OutboxItem(1, OutboxKind.CONFIG, "VM01", "p/VM01/config", b"{}", 1, True, None)
    dispense = OutboxItem(
        2, OutboxKind.DISPENSE, "VM01", "p/VM01/command", b'{"cmd":"dispense"}', 1, False, "u1"
    )
    mqtt = RecordingMqtt()
    metrics = Metrics()
    # The context is used only when a row fails; none does here.
    publisher = OutboxPublisher(cast(ServiceContext, None), cast(MqttClient, mqtt), metrics)

    sent, complete = await publisher._publish_batch([config, dispense])

    assert (sent, complete) == ([config, dispense], True)
    # Retained config (a device that reconnects gets it); commands are QoS 1, never retained.
    assert [(p[0], p[2], p[3]) for p in mqtt.published] == [
        ("p/VM01/config", 1, True),
        ("p/VM01/command", 1, False),
    ]
    assert [type(p[2]) for p in mqtt.published] == [int, int]
    counted = {
        kind: metrics.registry.get_sample_value("vendhub_mqtt_messages_out_total", {"kind": kind})
        for kind in ("config", "dispense")
    }
    assert counted == {"config": 1.0, "dispense": 1.0}


class FailingMqtt(RecordingMqtt):
    """The broker takes every row except those whose payload names an error."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if payload == b"long":
            raise ValueError("x" * 400 + "\nsecond line")
        if payload == b"blank":
            raise RuntimeError()
        await super().publish(topic, payload, qos, retain)


class Failures:
    def __init__(self) -> None:
        self.rows: list[str] = []

    def row_failed(self, what: str) -> None:
        self.rows.append(what)


async def test_a_row_that_fails_is_counted_and_logged_and_the_rest_of_the_batch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def command(item_id: int, payload: bytes) -> OutboxItem:
        return OutboxItem(
            item_id, OutboxKind.DISPENSE, "VM01", "p/VM01/command", payload, 1, False, None
        )

    long, blank, good = command(3, b"long"), command(4, b"blank"), command(5, b"good")
    failures = Failures()
    publisher = OutboxPublisher(
        cast(ServiceContext, failures), cast(MqttClient, FailingMqtt()), Metrics()
    )
    caplog.set_level(logging.ERROR, logger="vendhub.workers.publisher")

    sent, complete = await publisher._publish_batch([long, blank, good])

    assert (sent, complete) == ([good], True)
    assert failures.rows == ["outbox", "outbox"]
    lease = "outbox pass: row {} to p/VM01/command failed, will retry after its lease: {}"
    # The first line of the error only, at most 300 characters.
    assert [r.getMessage() for r in caplog.records] == [
        lease.format(3, "ValueError: " + "x" * 300),
        lease.format(4, "RuntimeError: "),
    ]


async def test_a_wake_at_the_moment_of_the_cancel_still_stops_the_publisher() -> None:
    """Container.stop() cancels `run` and waits for it. On Python 3.11 `asyncio.wait_for`
    returned the woken wait instead of raising the cancellation when both came in the same
    loop iteration (CPython gh-86296), so `run` polled on and the stop hung for ever; the
    integration tests that stop a container on MariaDB hung that way now and then."""
    publisher = OutboxPublisher(
        cast(ServiceContext, None), cast(MqttClient, RecordingMqtt()), Metrics()
    )
    polled = asyncio.Event()

    async def no_rows() -> int:
        polled.set()
        return 0

    publisher.publish_pending = no_rows  # type: ignore[method-assign]
    task = asyncio.create_task(publisher.run())
    await polled.wait()
    # `run` now waits for a wake or the next poll; a row committed as the stop begins:
    publisher.wake()
    task.cancel()
    # Bounded only against the hang this is about.
    done, _ = await asyncio.wait({task}, timeout=10)
    assert task in done and task.cancelled()
