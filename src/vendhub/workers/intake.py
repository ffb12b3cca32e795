"""MQTT intake: validate each message, then hand it to bounded queues and batch writers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from vendhub.adapters.mqtt.client import InboundMessage
from vendhub.metrics import Metrics
from vendhub.protocol.messages import InvalidPayload, parse_result, parse_status, parse_telemetry
from vendhub.protocol.topics import InvalidTopic, TopicKind, parse_topic
from vendhub.services import fleet, results
from vendhub.services.context import ServiceContext
from vendhub.services.fleet import TelemetryReading

log = logging.getLogger(__name__)

# Bounded so a flood waits at the socket (backpressure) instead of growing memory.
EVENT_QUEUE_SIZE = 1000
TELEMETRY_QUEUE_SIZE = 20_000
# Large batches: per-row cost is small, per-transaction cost is what limits SQLite.
TELEMETRY_BATCH = 2000
TELEMETRY_FLUSH_S = 0.2
TELEMETRY_POLL_S = 0.02  # how often a partial batch looks for more within the window
# Results free machines for their next unit: enough workers to keep up beside HTTP work.
EVENT_WORKERS = 8
# Results that arrived together, applied in one transaction (services/results.py).
RESULT_BATCH = 50


class Intake:
    def __init__(self, ctx: ServiceContext, metrics: Metrics) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.events: asyncio.Queue[tuple[str, TopicKind, bytes]] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self.telemetry: asyncio.Queue[TelemetryReading] = asyncio.Queue(TELEMETRY_QUEUE_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        # Labelled children looked up once: labels() on every message is measurable.
        self._received = {kind: metrics.messages_in.labels(kind.value) for kind in TopicKind}

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._event_worker(), name=f"intake-{i}")
            for i in range(EVENT_WORKERS)
        ]
        self._tasks.append(asyncio.create_task(self._telemetry_writer(), name="telemetry"))

    async def stop(self) -> None:
        """Finish what was accepted (bounded wait), then stop the workers."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), timeout=5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        await self.events.join()
        await self.telemetry.join()

    async def handle(self, message: InboundMessage) -> None:
        try:
            parsed = parse_topic(self.ctx.tunables.topic_prefix, message.topic)
        except InvalidTopic as exc:
            self.metrics.invalid_payloads.labels("topic").inc()
            log.warning("dropped message on %s: %s", message.topic, exc)
            return
        self._received[parsed.kind].inc()
        if parsed.kind is TopicKind.TELEMETRY:
            try:
                reading, raw = parse_telemetry(message.payload)
            except InvalidPayload as exc:
                self._invalid(message.topic, parsed.kind, exc)
                return
            await self.telemetry.put(
                TelemetryReading(parsed.machine_id, self.ctx.clock(), reading, raw)
            )
        elif parsed.kind in (TopicKind.DISPENSE_RESULT, TopicKind.STATUS):
            await self.events.put((parsed.machine_id, parsed.kind, message.payload))

    def _invalid(self, topic: str, kind: TopicKind, exc: Exception) -> None:
        self.metrics.invalid_payloads.labels(kind.value).inc()
        log.warning("dropped invalid payload on %s: %s", topic, exc)

    async def _event_worker(self) -> None:
        while True:
            events = [await self.events.get()]
            # Whatever else is already waiting goes with it: results in one transaction.
            while len(events) < RESULT_BATCH and not self.events.empty():
                events.append(self.events.get_nowait())
            try:
                await self._apply_events(events)
            finally:
                for _ in events:
                    self.events.task_done()

    async def _apply_events(self, events: list[tuple[str, TopicKind, bytes]]) -> None:
        arrivals: list[results.Arrival] = []
        for machine_id, kind, payload in events:
            try:
                if kind is TopicKind.DISPENSE_RESULT:
                    arrivals.append((machine_id, parse_result(payload), payload.decode("utf-8")))
                else:
                    await fleet.apply_status(self.ctx, machine_id, parse_status(payload))
            except InvalidPayload as exc:
                self._invalid(f"{machine_id}/{kind.value}", kind, exc)
            except Exception:
                # A database hiccup must not kill the worker; the device re-sends until acked.
                log.exception("failed to apply %s from %s", kind.value, machine_id)
        if not arrivals:
            return
        for outcome in await results.apply_results(self.ctx, arrivals):
            self.metrics.results.labels(outcome.value).inc()

    async def _telemetry_writer(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await fleet.store_telemetry(self.ctx, batch)
            except Exception:
                log.exception("failed to store %d telemetry reading(s)", len(batch))
            finally:
                for _ in batch:
                    self.telemetry.task_done()

    async def _next_batch(self) -> list[TelemetryReading]:
        """Wait for one reading, then gather what arrives within the flush window.

        Drained with get_nowait: a timed wait per reading would cost a task per message."""
        batch = [await self.telemetry.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TELEMETRY_FLUSH_S
        while len(batch) < TELEMETRY_BATCH:
            while len(batch) < TELEMETRY_BATCH and not self.telemetry.empty():
                batch.append(self.telemetry.get_nowait())
            remaining = deadline - loop.time()
            if len(batch) >= TELEMETRY_BATCH or remaining <= 0:
                break
            await asyncio.sleep(min(remaining, TELEMETRY_POLL_S))
        return batch
