"""Outbox publisher: sends committed commands to the broker, marks them sent after the PUBACK."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from vendhub.adapters.mqtt.client import MqttClient, MqttNotConnected, MqttPublishError
from vendhub.metrics import Metrics
from vendhub.services import commands
from vendhub.services.context import ServiceContext

log = logging.getLogger(__name__)

# Safety net: rows written by another process (CLI, another replica) are found by polling.
POLL_INTERVAL_S = 1.0


class OutboxPublisher:
    def __init__(self, ctx: ServiceContext, mqtt: MqttClient, metrics: Metrics) -> None:
        self.ctx = ctx
        self.mqtt = mqtt
        self.metrics = metrics
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.publish_pending()
            except Exception:
                log.exception("outbox pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)

    async def publish_pending(self) -> int:
        sent = 0
        while True:
            items = await commands.pending(self.ctx)
            if not items:
                return sent
            for item in items:
                if not await commands.still_sendable(self.ctx, item):
                    await commands.mark_done(
                        self.ctx, item, sent=False, error="unit settled or expired before sending"
                    )
                    continue
                try:
                    await self.mqtt.publish(item.topic, item.payload, item.qos, item.retain)
                except (MqttNotConnected, MqttPublishError) as exc:
                    # Stays in the outbox; resumed when the connection is back.
                    log.info("outbox paused at id=%d: %s", item.id, exc)
                    await self.mqtt.wait_connected(within_s=5)
                    return sent
                await commands.mark_done(self.ctx, item, sent=True)
                self.metrics.messages_out.labels(item.kind.value).inc()
                sent += 1
